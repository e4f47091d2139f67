"""Shared fixtures: run the CLI in-process or as a real subprocess, and test models."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The frameworks the tests import write into the home folder (TensorFlow: ~/.keras/keras.json
# and matplotlib's config and font cache; Paddle: ~/.cache/paddle): the test run gets a home of
# its own instead. The process that makes it removes it; children (which inherit the variable)
# use their parent's.
_HOME = os.environ.get("MCONV_TEST_HOME", "")
_OWN_HOME = not os.path.isdir(_HOME)
if _OWN_HOME:
    _HOME = tempfile.mkdtemp(prefix="mconv-test-home-")
    os.environ["MCONV_TEST_HOME"] = _HOME
    atexit.register(shutil.rmtree, _HOME, True)
os.environ["HOME"] = _HOME
os.environ["MPLCONFIGDIR"] = os.path.join(_HOME, "matplotlib")


def pytest_unconfigure(config):
    if _OWN_HOME:  # an xdist worker may end without running atexit handlers
        shutil.rmtree(_HOME, ignore_errors=True)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Run ``mconv ARGS`` in this process (fast) and capture exit code, stdout, stderr."""
    from mconv.cli import main
    from mconv.cli import state as _state

    def run(*args: str) -> CliResult:
        _state["debug"] = False
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return run


@pytest.fixture
def mconv_proc():
    """Run ``mconv ARGS`` as a separate process, the way users and CI do."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> CliResult:
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.run(
            [sys.executable, "-m", "mconv", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=e,
            timeout=timeout,
        )
        return CliResult(p.returncode, p.stdout, p.stderr)

    return run


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with the current directory set to a fresh temporary folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_clean_error(result: CliResult, code: int, *needles: str) -> None:
    """One-line error on stderr with the expected code, no traceback, mentioning each needle."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err and "Traceback" not in result.out
    lines = [ln for ln in result.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("mconv: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])


BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("No module named " + repr(name))
        return None
sys.meta_path.insert(0, _Block())
"""


def block_imports(folder: Path, *names: str) -> dict:
    """An environment in which ``names`` cannot be imported (as if not installed), for children too."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER.format(blocked=set(names)))
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
