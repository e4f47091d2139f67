"""Fixtures for the ncnn target tests: build tiny ONNX graphs, convert them with
the writer, run ncnn in-process and compare with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ncnn", reason="the ncnn wheel is needed to run converted models")

from mconv.metrics import compare_outputs, default_tolerance
from mconv.targets.base import BuildOptions
from mconv.targets.ncnn.conformance import convert_and_run, run_onnxruntime
from mconv.targets.ncnn.target import NcnnTarget


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple[int, ...]],
    outputs: list[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A one-graph model with float inputs; output shapes left to inference."""
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


class Checker:
    """Convert + run + compare; keeps the last artifact for structural asserts."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.n = 0
        self.artifact = None

    def __call__(
        self,
        model: onnx.ModelProto,
        feeds: dict[str, np.ndarray] | None = None,
        precision: str = "fp32",
        calib=None,
        options: dict | None = None,
    ):
        feeds = feeds or random_feeds(model)
        ref = run_onnxruntime(model, [feeds])
        self.n += 1
        target = NcnnTarget().make_options(options, precision=precision)
        opts = BuildOptions(precision=precision, calib=calib, target=target)
        outs, art = convert_and_run(model, [feeds], self.tmp / f"m{self.n}", opts)
        self.artifact = art
        comp = compare_outputs(ref, outs, default_tolerance(precision))
        assert comp.passed, comp.summary()
        return comp

    def param_text(self) -> str:
        assert self.artifact is not None
        return self.artifact.main.read_text()


@pytest.fixture
def check(tmp_path: Path) -> Checker:
    return Checker(tmp_path)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(name="make_model")
def make_model_fixture():
    return make_model
