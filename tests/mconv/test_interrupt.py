"""SIGINT/SIGTERM during a build: exit 130/143, temporaries removed, nothing at the output path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

from tests.conftest import ROOT
from tests.models import randomized_light_model


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_build_leaves_nothing(tmp_path, sig, code):
    src = tmp_path / "squeezenet.onnx"
    onnx.save(randomized_light_model("squeezenet"), str(src))
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        np.save(calib / f"{i}.npy", rng.uniform(0, 1, (1, 3, 224, 224)).astype(np.float32))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mconv",
            "build",
            str(src),
            "-t",
            "openvino",
            "--int8",
            "--calib",
            str(calib),
            "-o",
            str(out),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    # Wait until the writer's staging folder exists: the build is mid-write.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the build ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
