"""A runtime that crashes natively while build verifies its artifact: a clear error naming
the signal, and nothing written at the output path."""

from __future__ import annotations

import os
import signal

import onnx
import pytest

from mconv.modelio import save_onnx
from mconv.targets import Artifact, Runner, Target
from tests.conftest import assert_clean_error
from tests.models import conv_bn_relu_model


class _SegvRunner(Runner):
    def load(self) -> None:
        pass

    def input_names(self) -> list[str]:
        return ["x"]

    def output_names(self) -> list[str]:
        return ["y"]

    def infer_impl(self, feeds):
        os.kill(os.getpid(), signal.SIGSEGV)  # what a broken native runtime does


class SegvTarget(Target):
    """Writes a real file, then its runtime dies with SIGSEGV when run (a test double)."""

    name = "segv_build"
    isolate = True
    precisions = ("fp32",)

    def write(self, model, out_dir, stem, options):
        files = save_onnx(model, out_dir / f"{stem}.segv.onnx")
        return Artifact(self.name, files[0], files, options.precision)

    def runner(self, artifact, *, threads=None):
        return _SegvRunner(artifact, threads=threads)


@pytest.fixture
def segv_target():
    from mconv.targets import register, unregister

    register(SegvTarget)
    yield
    unregister(SegvTarget.name)


def test_native_crash_during_build_verification(cli, in_tmp, segv_target):
    src = in_tmp / "m.onnx"
    onnx.save(conv_bn_relu_model(), str(src))
    r = cli("build", src, "-t", "segv_build", "-o", in_tmp / "out")
    assert_clean_error(r, 1, "crashed natively (SIGSEGV)")
    assert not (in_tmp / "out").exists()
    assert sorted(p.name for p in in_tmp.iterdir()) == ["m.onnx"]
