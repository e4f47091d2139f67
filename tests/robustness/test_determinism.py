"""Deterministic outputs: building the same input twice gives byte-identical artifacts for
every target and precision; reports differ only in their volatile fields (times)."""

from __future__ import annotations

import json

import numpy as np
import pytest

CASES = [(target, precision) for target in ("onnx", "openvino", "ncnn") for precision in ("fp32", "fp16", "int8")]


@pytest.fixture(scope="module")
def model_and_calib(tmp_path_factory):
    import torch

    from tests.models import small_cnn

    d = tmp_path_factory.mktemp("det")
    src = d / "cnn.onnx"
    torch.onnx.export(
        small_cnn(),
        (torch.randn(1, 3, 32, 32),),
        str(src),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
    )
    calib = d / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        np.save(calib / f"{i}.npy", rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32))
    return src, calib


def _volatile_free(report: dict) -> dict:
    """The report without times and the output folder (which differ by construction)."""

    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items() if k not in ("seconds", "artifacts", "artifact")}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    return clean(report)


@pytest.mark.parametrize(("target", "precision"), CASES)
def test_build_twice_is_byte_identical(cli, tmp_path, model_and_calib, target, precision):
    src, calib = model_and_calib
    outs, reports = [], []
    for run in ("a", "b"):
        out = tmp_path / run
        args = ["build", src, "-t", target, "-o", out, "--json"]
        if precision == "fp16":
            args.append("--fp16")
        elif precision == "int8":
            args += ["--int8", "--calib", calib]
        r = cli(*args)
        if r.code == 1 and "failed to load" in r.err:
            pytest.skip(f"{target} target not available: {r.err.strip()}")
        assert r.code == 0, r.err
        outs.append(out)
        reports.append(r.json)
    files_a = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    assert files_a == files_b and files_a
    for rel in files_a:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), f"{target} {precision}: {rel} differs"
    assert json.dumps(_volatile_free(reports[0]), sort_keys=True) == json.dumps(
        _volatile_free(reports[1]), sort_keys=True
    )
