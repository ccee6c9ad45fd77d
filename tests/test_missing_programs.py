"""tests/conftest.py's missing_program: a test that needs a program this environment lacks (MariaDB,
Chromium) skips saying why and the run ends by counting such tests; where every test must run
($FATP_REQUIRE_ALL_TESTS=1, as .ci/run sets) it fails instead. Run through pytest itself."""
import os
import subprocess
import sys

from tests import REPO

NEEDY = '''
from tests.conftest import missing_program

def test_needs_a_browser():
    missing_program("no chromium here")

def test_needs_nothing():
    pass
'''


def _pytest(tmp_path, **env):
    path = tmp_path / "test_needy.py"
    path.write_text(NEEDY)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.conftest", "-p", "no:cacheprovider",
                          str(path)], cwd=REPO, capture_output=True, text=True,
                         env={**{k: v for k, v in os.environ.items() if k != "FATP_REQUIRE_ALL_TESTS"}, **env})
    return run.returncode, run.stdout


def test_a_missing_program_skips_with_its_reason_and_is_counted_at_the_end(tmp_path):
    rc, out = _pytest(tmp_path)
    assert rc == 0
    assert "1 tests could not run here for want of a program:" in out and "1: no chromium here" in out
    assert "SKIPPED [1]" in out and "missing program: no chromium here" in out
    assert out.rstrip().splitlines()[-1].startswith("1 passed, 1 skipped")


def test_where_every_test_must_run_a_missing_program_fails_the_run(tmp_path):
    rc, out = _pytest(tmp_path, FATP_REQUIRE_ALL_TESTS="1")
    assert rc == 1 and "1 failed, 1 passed" in out
    assert "no chromium here ($FATP_REQUIRE_ALL_TESTS=1: every test must run here)" in out
