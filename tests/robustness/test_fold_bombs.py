"""Memory bombs: tiny graphs whose constant folding would allocate tens of GiB.

A 4-node model whose ``Expand`` of a 1x1 constant to [60000, 60000] (13.4 GiB)
feeds a reduction, the same with ``ConstantOfShape`` to [100000, 100000]
(37.3 GiB) and ``Tile``. Each command runs as a real process under an address-space
limit well below the bomb (so a regression fails instead of taking the machine),
and its peak RSS is read from the kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ROOT

ADDRESS_LIMIT = 6 << 30
PEAK_RSS_LIMIT = 1 << 30


def bomb_model(kind: str) -> onnx.ModelProto:
    n = 100_000 if kind == "ConstantOfShape" else 60_000
    inits = [numpy_helper.from_array(np.array([n, n], np.int64), "shape")]
    if kind == "ConstantOfShape":
        big = helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["big"],
            name="ConstantOfShape_bomb",
            value=numpy_helper.from_array(np.ones(1, np.float32)),
        )
    else:
        inits.append(numpy_helper.from_array(np.ones((1, 1), np.float32), "one"))
        big = helper.make_node(kind, ["one", "shape"], ["big"], name=f"{kind}_bomb")
    nodes = [big, helper.make_node("ReduceSum", ["big"], ["s"], keepdims=1), helper.make_node("Add", ["x", "s"], ["y"])]
    g = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


# A small launcher process starts mconv and reads its peak RSS: a child forked straight from
# the pytest worker inherits the worker's resident pages until exec, and Linux keeps that
# high-water mark in ru_maxrss (a worker that imported TensorFlow made every bomb "1.3 GB").
_LAUNCHER = """
import os, resource, subprocess, sys
limit, fd, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
p = subprocess.Popen([sys.executable, "-m", "mconv", *args], preexec_fn=cap)
_, status, usage = os.wait4(p.pid, 0)
sys.stderr.flush()
os.write(fd, f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}".encode())
"""


def run_bounded(args: list[str], cwd, env: dict | None = None) -> tuple[int, str, str, int]:
    """``mconv ARGS`` as a process under RLIMIT_AS: exit code, stdout, stderr, peak RSS bytes."""
    out, err = cwd / ".stdout", cwd / ".stderr"
    read_end, write_end = os.pipe()
    with open(out, "w") as fo, open(err, "w") as fe:
        p = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(ADDRESS_LIMIT), str(write_end), *map(str, args)],
            cwd=cwd,
            stdout=fo,
            stderr=fe,
            pass_fds=(write_end,),
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        os.close(write_end)
        p.wait()
    with os.fdopen(read_end) as r:
        code, peak = (int(v) for v in r.read().split())
    texts = out.read_text(), err.read_text()
    out.unlink()
    err.unlink()
    return code, texts[0], texts[1], peak


BOMBS = [("Expand", "13.4 GiB"), ("ConstantOfShape", "37.3 GiB"), ("Tile", "13.4 GiB")]


@pytest.mark.parametrize(("kind", "size"), BOMBS)
def test_optimize_leaves_the_bomb_unfolded(tmp_path, kind, size):
    src = tmp_path / "bomb.onnx"
    onnx.save(bomb_model(kind), str(src))
    code, out, err, peak = run_bounded(["optimize", src, "-o", tmp_path / "opt.onnx", "--json"], tmp_path)
    assert code == 0, err
    assert err == ""  # no onnxruntime/onnxsim lines: they never ran the node
    assert peak < PEAK_RSS_LIMIT
    assert kind in [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert f"{kind}_bomb ({size})" in out and "--fold-limit" in out  # the report says why


@pytest.mark.parametrize(("kind", "size"), BOMBS)
def test_ncnn_build_refuses_the_bomb(tmp_path, kind, size):
    src = tmp_path / "bomb.onnx"
    onnx.save(bomb_model(kind), str(src))
    code, _, err, peak = run_bounded(["build", src, "-t", "ncnn", "-o", tmp_path / "out"], tmp_path)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert kind in lines[0] and size in lines[0] and "--fold-limit" in lines[0]
    assert peak < PEAK_RSS_LIMIT
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_bad_fold_limit_is_a_usage_error(tmp_path):
    src = tmp_path / "bomb.onnx"
    onnx.save(bomb_model("Expand"), str(src))
    code, _, err, _ = run_bounded(["optimize", src, "--fold-limit", "lots"], tmp_path)
    assert code == 2
    assert err.startswith("mconv: error: --fold-limit: 'lots'") and "512M" in err and "Traceback" not in err
    assert not (tmp_path / "bomb.opt.onnx").exists()
    code, _, err, _ = run_bounded(["optimize", src], tmp_path, env={"MCONV_FOLD_LIMIT": "-3"})
    assert code == 2 and "MCONV_FOLD_LIMIT" in err
