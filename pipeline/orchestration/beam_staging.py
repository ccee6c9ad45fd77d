"""No copy of TFX staged for Beam workers that run from this environment.

Every Beam-based TFX executor (this project's AudioExampleGen, TFX's StatisticsGen, Evaluator and
BulkInferrer) calls `tfx.utils.dependency_utils.make_beam_dependency_flags` when it is constructed.
Unless the flags already name a package or a container image, that copies the whole installed
`tfx` package into a fresh `tempfile.mkdtemp()` folder, runs `setup.py sdist` on it and adds
`--extra_package=<that sdist>`: about 52 MB and a `setup.py` run per component and run, and the
folder is never removed. Under LocalDagRunner the workers are this process (or processes started
with this interpreter), which read no `--extra_package`, so all of it is waste: after a day of test
runs here, 929 such folders held 45 GB of /tmp, and CI then ran out of disk. install() makes that
function return the flags unchanged where the runner ships no packages (runners.ships_no_packages);
any other runner gets TFX's own behaviour (its workers need this project too: `--setup_file
./setup.py` or the project's image, which also turn TFX's copy off; BUILD_NOTES.md "Beyond one
machine").
"""
from __future__ import annotations

from pipeline.beam import runners


def install() -> None:
    """Wrap TFX's make_beam_dependency_flags once, in this process (where LocalDagRunner runs the
    executors). Idempotent."""
    from tfx.utils import dependency_utils

    tfx_flags = dependency_utils.make_beam_dependency_flags
    if getattr(tfx_flags, "_fatp_wrapped", False):
        return

    def make_beam_dependency_flags(beam_pipeline_args: list[str]) -> list[str]:
        if runners.ships_no_packages(beam_pipeline_args):
            return beam_pipeline_args
        return tfx_flags(beam_pipeline_args)

    make_beam_dependency_flags._fatp_wrapped = True
    dependency_utils.make_beam_dependency_flags = make_beam_dependency_flags
