"""Loading a model from any source: ONNX as it is, other frameworks through their
exporter (the source registry, :mod:`mconv.convert`, detects which by content).

The pipeline (build, export, inspect) and verify both start here, so neither
imports the other for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from mconv.convert import Source, SourceExport, detect
from mconv.convert.base import ExportOptions
from mconv.errors import InputError
from mconv.modelio import load_onnx, parse_model

__all__ = ["ExportOptions", "export_source", "is_onnx_artifact", "load_model_any", "source_kind", "stem_of"]


def source_of(path: Path) -> Source:
    """The registered source that reads ``path`` (input error when none does)."""
    return detect(path)


def source_kind(path: Path) -> str:
    """The name of the source that reads ``path``: 'onnx', 'torch', 'paddle', 'tf', ..."""
    return source_of(path).name


def stem_of(path: Path) -> str:
    try:
        return source_of(path).stem(path)
    except InputError:
        return path.stem or "model"


def export_source(path: Path, opts: ExportOptions, source: Source | None = None) -> SourceExport:
    """A non-ONNX source exported to an in-memory ONNX model (with its reference outputs)."""
    source = source or source_of(path)
    source.check_options(opts)
    return source.export(path, opts)


def load_model_any(path: Path, opts: ExportOptions) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Any source -> an ONNX ModelProto and facts about the source (``kind``: its name)."""
    source = source_of(path)
    if not source.exports:
        source.check_options(opts)
        return load_onnx(path), {"kind": source.name}
    result = export_source(path, opts, source)
    from mconv.modelio import check_model

    check_model(result.model, f"{path} (exported)")
    return result.model, {"kind": source.name, "exporter": result.exporter, **result.facts}


def is_onnx_artifact(path: Path) -> bool:
    try:
        parse_model(path)
        return True
    except InputError:
        return False
