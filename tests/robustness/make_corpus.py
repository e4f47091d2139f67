"""Generate the corpus of bad and hostile inputs (no hand-edited binaries in the repo).

    python tests/robustness/make_corpus.py OUT_DIR

Every item is something a stranger might hand to mconv; every command must refuse it with
exit 1 or 2, one line, no traceback, without running code from it or writing outside its
output folder. ``MARKER`` is the file a pickle payload would create if it were unpickled.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MARKER = "PWNED_MARKER"


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _model(nodes, inits=(), opset=17, inputs=None, outputs=None):
    g = helper.make_graph(
        nodes, "corpus", inputs or [_vi("x", [1, 4])], outputs or [_vi("y", [1, 4])], initializer=list(inits)
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _save(m: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(m.SerializeToString())


def _good() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), "W")
    return _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [w])


def _external(location: str, length: int = 64) -> onnx.ModelProto:
    m = _good()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return m


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def make_corpus(out: Path) -> dict[str, Path]:
    """Write every item under ``out``; return name -> path. ``out/outside.bin`` is bait."""
    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"
    models.mkdir(exist_ok=True)
    (out / "outside.bin").write_bytes(b"\0" * 64)
    items: dict[str, Path] = {}

    def add(name: str, data: bytes | None = None) -> Path:
        p = models / name
        if data is not None:
            p.write_bytes(data)
        items[name] = p
        return p

    rng = np.random.default_rng(0)
    add("empty.onnx", b"")
    add("empty.pt", b"")
    for suffix in ("onnx", "pt", "pt2"):
        add(f"random.{suffix}", rng.bytes(4096))
    good = _good().SerializeToString()
    add("truncated.onnx", good[: len(good) // 2])
    add(
        "cycle.onnx",
        _model(
            [helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2")],
            outputs=[_vi("b", [1, 4])],
        ).SerializeToString(),
    )
    add("dangling.onnx", _model([helper.make_node("Relu", ["nowhere"], ["y"], name="r")]).SerializeToString())
    unknown = _model([helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="com.unknown")])
    unknown.opset_import.append(helper.make_opsetid("com.unknown", 1))
    add("unknown_domain.onnx", unknown.SerializeToString())
    add("ext_missing.onnx", _external("weights.bin").SerializeToString())
    add("ext_wrong_size.onnx", _external("short.bin").SerializeToString())
    (models / "short.bin").write_bytes(b"\0" * 10)
    add("ext_escape_relative.onnx", _external("../outside.bin").SerializeToString())
    add("ext_escape_absolute.onnx", _external(str((out / "outside.bin").resolve())).SerializeToString())
    short = _good()
    short.graph.initializer[0].raw_data = short.graph.initializer[0].raw_data[:8]
    add("declared_exceeds_data.onnx", short.SerializeToString())
    add("opset1.onnx", _model([helper.make_node("Relu", ["x"], ["y"], name="r")], opset=1).SerializeToString())
    add(
        "opset_future.onnx",
        _model(
            [helper.make_node("Relu", ["x"], ["y"], name="r")], opset=onnx.defs.onnx_opset_version() + 10
        ).SerializeToString(),
    )
    p = add("not_torchscript.pt")
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/readme.txt", "a zip, but no model in it")
    marker = str((out / MARKER).resolve())
    add("pickle_payload.pt", pickle.dumps(_Payload(marker), protocol=2))
    try:
        import torch

        torch.save({"model": _Payload(marker)}, add("pickle_payload_zip.pt"))
    except ImportError:
        pass
    recipes = out / "recipes"
    recipes.mkdir(exist_ok=True)
    bomb = ["version: 1", 'a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    prev = "a"
    for level in "bcdefghij":
        bomb.append(f"{level}: &{level} [" + ",".join([f"*{prev}"] * 10) + "]")
        prev = level
    (recipes / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    items["bomb.yaml"] = recipes / "bomb.yaml"
    (recipes / "escape.yaml").write_text(
        "version: 1\nname: escape\nsource:\n  path: ../outside.bin\ntargets:\n  - target: onnx\n"
    )
    items["escape.yaml"] = recipes / "escape.yaml"
    return items


if __name__ == "__main__":
    for name, path in make_corpus(Path(sys.argv[1])).items():
        print(f"{name}: {path}")
