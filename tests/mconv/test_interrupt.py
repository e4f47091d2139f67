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


def relu_chain(n: int) -> onnx.ModelProto:
    """``n`` Relu nodes in a row: OpenVINO's compile_model takes time quadratic in ``n``
    (7 s for 1000 on 2 cores, minutes for 4000) inside one native call."""
    nodes = [onnx.helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu{i}") for i in range(n)]
    g = onnx.helper.make_graph(
        nodes,
        "chain",
        [onnx.helper.make_tensor_value_info("t0", onnx.TensorProto.FLOAT, [1, 8])],
        [onnx.helper.make_tensor_value_info(f"t{n}", onnx.TensorProto.FLOAT, [1, 8])],
    )
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = {int(x) for x in f.read().split()}
        except OSError:
            continue
        found |= kids
        todo.extend(kids)
    return found


def _slow_openvino_build(tmp_path, *extra: str) -> tuple[subprocess.Popen, object]:
    src = tmp_path / "chain.onnx"
    onnx.save(relu_chain(4000), str(src))
    out = tmp_path / "out"
    # --passes infer_shapes: onnxsim would merge the chain into one Relu.
    args = ["build", str(src), "-t", "openvino", "--passes", "infer_shapes", "-o", str(out), *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mconv", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return proc, out


@pytest.mark.slow
def test_sigterm_during_a_slow_openvino_compile_ends_within_seconds(tmp_path):
    proc, out = _slow_openvino_build(tmp_path)
    # The IR is written, then the reference runs, then the verification compiles it.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
        if staging and any(f.suffix == ".xml" for f in staging[0].iterdir()):
            break
        time.sleep(0.1)
    time.sleep(10)  # well inside compile_model, which takes minutes on this chain
    assert proc.poll() is None, "the build ended before it could be interrupted"
    kids = _children(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 143, err
    assert elapsed < 10, f"SIGTERM took {elapsed:.1f} s"
    assert "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    time.sleep(1)
    alive = [k for k in kids if os.path.exists(f"/proc/{k}") and "zombie" not in _state(k)]
    assert alive == [], "runner child processes outlived mconv"


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return f.read().lower()
    except OSError:
        return "zombie"


@pytest.mark.slow
def test_a_runner_past_its_timeout_fails_the_build(tmp_path):
    proc, out = _slow_openvino_build(tmp_path, "--timeout", "8")
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "timed out after 8 s" in lines[0] and "--timeout" in lines[0], err
    assert time.monotonic() - t0 < 120
    assert not out.exists()
