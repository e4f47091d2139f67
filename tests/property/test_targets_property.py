"""Property: every target either converts within its tolerance or refuses before writing.

For random valid graphs, ``build_model`` (the same call as ``mconv build``) into a
temporary folder must end one of two ways:

* success: the report says verification passed and the output folder holds the files;
* a refusal: an ``MconvError`` raised before the target's ``write`` returned (for ncnn:
  a ``ConversionError``/``UnsupportedOpsError`` from its in-memory lowering), with no
  output folder and no staging leftovers.

Anything else fails the property: an exception that is not an ``MconvError`` (a crash
in a writer), a ``VerificationError`` (the target wrote something that computes a
different function), or any error after the files were written (the runtime crashed
or could not load what the writer produced).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import onnx
import pytest
from hypothesis import assume, given, settings

from mconv.errors import ConversionError, MconvError, VerificationError
from mconv.pipeline import BuildRequest, build_model
from tests.property.strategies import GraphCase, onnx_graphs

TARGETS = ("onnx", "openvino", "ncnn")
# A build is ~0.1-1 s (ncnn verifies in a child process): half the profile's budget.
EXAMPLES = max(8, settings().max_examples // 2)


# Graph patterns that hit a bug already reported with an xfail test in
# test_regressions.py; the property skips them so that it keeps looking for new ones.
# Remove an entry when its regression test starts passing.
KNOWN_BUGS: dict[str, list[Callable[[onnx.ModelProto], bool]]] = {}


def target_or_skip(name: str) -> None:
    from mconv.targets import get_target

    try:
        target = get_target(name)
    except MconvError as e:
        pytest.skip(f"target '{name}' does not load: {e}")
    missing = target.runtime_missing()
    if missing:
        pytest.skip(f"target '{name}': {missing}")


@contextlib.contextmanager
def watch_write(target: str) -> Iterator[dict[str, bool]]:
    """Record whether the target's real ``write`` returned (a pass-through, not a stub)."""
    from mconv.targets import get_target

    cls = type(get_target(target))
    real = cls.write
    state = {"written": False}

    def write(self, *args, **kwargs):
        artifact = real(self, *args, **kwargs)
        state["written"] = True
        return artifact

    with mock.patch.object(cls, "write", write):
        yield state


def build_outcome(model: onnx.ModelProto, target: str) -> str:
    """Build ``model`` for ``target`` in a fresh folder: 'built' or 'refused', else fail."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        src = folder / "m.onnx"
        onnx.save(model, src)
        out = folder / "out"
        with watch_write(target) as state:
            try:
                result = build_model(BuildRequest(path=src, target=target, out_dir=out))
            except VerificationError as e:
                raise AssertionError(f"{target}: wrote a model that computes something else: {e}") from e
            except MconvError as e:
                leftovers = sorted(p.name for p in folder.iterdir() if p.name != "m.onnx")
                assert not leftovers, f"{target} failed ({e}) but left {leftovers} behind"
                assert not state["written"], f"{target}: failed after writing: {type(e).__name__}: {e}"
                if target == "ncnn":  # ncnn lowers in memory first: refusals come from there
                    assert isinstance(e, ConversionError), f"ncnn refused with {type(e).__name__}: {e}"
                return "refused"
        assert result.verification.passed, result.to_json()["verification"]
        assert out.is_dir()
        for f in result.files:
            assert Path(f).is_file() and Path(f).parent == out, f
        return "built"


@pytest.mark.parametrize("target", TARGETS)
@settings(max_examples=EXAMPLES)
@given(case=onnx_graphs(max_ops=6))
def test_target_converts_or_refuses(target: str, case: GraphCase) -> None:
    target_or_skip(target)
    assume(not any(bug(case.model) for bug in KNOWN_BUGS.get(target, [])))
    assert build_outcome(case.model, target) in ("built", "refused")
