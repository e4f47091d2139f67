"""Loading a model from any source: ONNX as it is, PyTorch through the exporter.

The pipeline (build, export, inspect) and verify both start here, so neither
imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from mconv.errors import InputError
from mconv.modelio import load_onnx, parse_model
from mconv.specs import DynamicAxis, InputSpec


@dataclass
class ExportOptions:
    model_spec: str | None = None
    inputs: list[InputSpec] = field(default_factory=list)
    dynamic: list[DynamicAxis] = field(default_factory=list)
    opset: int | None = None
    exporter: str = "auto"
    trust_pickle: bool = False


def source_kind(path: Path) -> str:
    """'onnx' or 'torch', from the file's content."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a model file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK" or head[:1] == b"\x80":
        return "torch"
    return "onnx"


def stem_of(path: Path) -> str:
    name = path.name
    for suffix in (".onnx", ".pt2", ".pt", ".pth", ".ckpt", ".bin", ".torchscript"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "model"
    return path.stem or "model"


def export_source(path: Path, opts: ExportOptions):
    from mconv.convert.torch import export

    return export(
        path,
        model_spec=opts.model_spec,
        inputs=opts.inputs,
        dynamic=opts.dynamic,
        opset=opts.opset,
        exporter=opts.exporter,
        trust_pickle=opts.trust_pickle,
    )


def load_model_any(path: Path, opts: ExportOptions) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Any source (ONNX or PyTorch) -> an ONNX ModelProto and facts about the source."""
    kind = source_kind(path)
    if kind == "onnx":
        return load_onnx(path), {"kind": "onnx"}
    result = export_source(path, opts)
    from mconv.modelio import check_model

    check_model(result.model, f"{path} (exported)")
    return result.model, {"kind": "torch", "exporter": result.exporter}


def is_onnx_artifact(path: Path) -> bool:
    try:
        parse_model(path)
        return True
    except InputError:
        return False
