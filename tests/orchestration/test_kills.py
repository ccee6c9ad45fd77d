"""fatp-pipeline killed with SIGKILL at each of 16 moments spread over a run (issue 31 §4), one
pipeline root rerun after each: inside the ExampleGen's decoding, its shard renames and its
manifest, after each of several components finished its work but before ML Metadata was told,
during training (after a backup) and the export's rename, in the Evaluator's bootstrap, in the
Pusher's copy and after its rename, during BulkInferrer's inference and the SubmissionWriter's
final concatenation (tests/killed_run.py says how a kill lands exactly there). After every kill:
ML Metadata opens and shows the killed component not COMPLETE; no Examples folder that says it is
complete is torn; every version in the serving root loads the way TF Serving loads it. Then a
plain rerun completes and delivers what an uninterrupted run on the same data delivers. Random
moments: bench/random_kills.py."""
import os
import subprocess
import sys

import pytest

from pipeline.data import demo_data
from tests import REPO
from tests import killed_run
from tests.orchestration.test_tfx_pipeline import NAME
from tests.orchestration.test_tfx_pipeline import _flags as pipeline_flags

pytestmark = pytest.mark.slow


def _flags(root, data) -> list[str]:
    return pipeline_flags(root, data, min_lwlrap=0)


def _env(**extra) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    env.pop("TF_CONFIG", None)
    return env


def _run(root, data) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.orchestration.run_local", *_flags(root, data)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=900)


def test_killed_at_16_moments_each_rerun_keeps_everything_whole_and_the_last_equals_an_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    demo_data.generate(str(data), train=40, test=4, seed=3, broken=True)
    clean = _run(tmp_path / "clean", data)
    assert clean.returncode == 0, clean.stderr[-3000:]
    root, mark = tmp_path / "killed", tmp_path / "mark"
    assert len(killed_run.MOMENTS) >= 12
    for name, moment in killed_run.MOMENTS.items():
        if mark.exists():
            mark.unlink()
        proc = subprocess.run([sys.executable, "-m", "tests.killed_run", name, "--", *_flags(root, data)], cwd=REPO,
                              env=_env(**{killed_run.MARK_ENV: str(mark)}), capture_output=True, text=True, timeout=900)
        # killed where it was meant to be (not finished, not failed for another reason)
        assert proc.returncode == -9 and mark.read_text().split() == [name, moment.component], \
            (name, proc.returncode, proc.stderr[-3000:])
        states = killed_run.states(str(root / "pipeline"), NAME)          # ML Metadata still opens
        assert states.get(moment.component) not in ("COMPLETE", "CACHED"), (name, states)
        assert killed_run.torn_examples(str(root / "pipeline")) == [], name
        assert killed_run.unloadable_versions(str(root / "serving" / "fat_tagger")) == [], name
    rerun = _run(root, data)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert set(killed_run.states(str(root / "pipeline"), NAME).values()) <= {"COMPLETE", "CACHED"}
    assert killed_run.torn_examples(str(root / "pipeline")) == []
    assert killed_run.unloadable_versions(str(root / "serving" / "fat_tagger")) == []
    want = killed_run.outcome(str(tmp_path / "clean" / "pipeline"), str(tmp_path / "clean" / "serving" / "fat_tagger"), NAME)
    got = killed_run.outcome(str(root / "pipeline"), str(root / "serving" / "fat_tagger"), NAME)
    assert want["versions"] == 1 and want["blessed"] == 1 and want["dead_letters"] == 9
    assert got == want
