"""The suite's own safety net (pyproject's pytest options + tests/conftest.py): a test that hangs ends
its xdist worker, runs once more in a fresh one, and its thread stacks are printed; a failed assertion
is not rerun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HANGS_ONCE = '''
import os, time, pytest

@pytest.mark.timeout(4)
def test_hangs_the_first_time():
    flag = os.path.join(os.environ["HANG_FLAG_DIR"], "hung")
    if not os.path.exists(flag):
        open(flag, "w").close()
        time.sleep(60)  # the worker is ended at 4 s

def test_fails():
    assert 1 == 2

def test_passes():
    pass
'''


@pytest.mark.slow
def test_a_hung_test_is_rerun_in_a_fresh_worker_with_its_stacks_printed(tmp_path):
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_hang.py").write_text(HANGS_ONCE)
    # the project's own pytest configuration, run on a directory that holds the hanging test
    res = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
                          "--rootdir", str(tmp_path), "tests"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=180,
                         env={**os.environ, "HANG_FLAG_DIR": str(tmp_path)})
    out = res.stdout + res.stderr
    assert "1 failed, 2 passed, 1 rerun" in out, out
    assert "replacing crashed worker" in out, out
    assert "a hung test" in out and "test_hang.py::test_hangs_the_first_time outlived" in out, out
    assert "test_hang.py\", line 9 in test_hangs_the_first_time" in out, out  # where it hung
