"""TFX's Beam executors stage no copy of TFX for a runner whose workers run from this environment
(pipeline/orchestration/beam_staging.py), and still do for one that ships packages."""
import os
import tempfile

import pytest

from components.audio_example_gen import executor
from pipeline.beam import runners
from pipeline.orchestration import beam_staging


@pytest.mark.parametrize("flags, local", [
    ([], True), (["--runner=DirectRunner"], True), (["--runner", "FnApiRunner"], True),
    (["--runner=DaskRunner"], True), (["--runner=DataflowRunner"], False), (["--runner=FlinkRunner"], False),
    (["--runner=PortableRunner", "--job_endpoint=localhost:8099"], False), (["--runner=PrismRunner"], False)])
def test_which_runners_ship_no_packages(flags, local):
    assert runners.ships_no_packages(flags) is local


def _built_in(tmp_path, monkeypatch, flags) -> tuple[list[str], list[str]]:
    """Construct a Beam executor as TFX's launcher does; (its Beam flags, what it left in the temp folder)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    beam_staging.install()
    built = executor.Executor(executor.Executor.Context(beam_pipeline_args=flags))
    return built._beam_pipeline_args, sorted(os.listdir(tmp_path))


def test_a_local_runner_gets_no_copy_of_tfx(tmp_path, monkeypatch):
    flags, left = _built_in(tmp_path, monkeypatch, runners.runner_flags([]))
    assert not [f for f in flags if f.startswith("--extra_package")]
    assert left == []        # before: tmpXXXX/build/tfx/ with a 52 MB sdist, per executor, never removed


def test_a_runner_that_ships_packages_keeps_tfx_rule(tmp_path, monkeypatch):
    given = ["--runner=FlinkRunner", "--setup_file=./setup.py"]
    flags, left = _built_in(tmp_path, monkeypatch, given)
    assert flags[:len(given)] == given and left == []     # a package is named: TFX adds nothing
    flags, left = _built_in(tmp_path, monkeypatch, ["--runner=FlinkRunner"])
    staged = [f for f in flags if f.startswith("--extra_package=")]    # TFX's own copy, really built
    assert len(staged) == 1 and staged[0].endswith(".tar.gz") and os.path.isfile(staged[0].split("=", 1)[1])
    assert staged[0].split("=", 1)[1].startswith(str(tmp_path)) and len(left) == 1


def test_install_is_idempotent():
    from tfx.utils import dependency_utils

    beam_staging.install()
    wrapped = dependency_utils.make_beam_dependency_flags
    beam_staging.install()
    assert dependency_utils.make_beam_dependency_flags is wrapped
