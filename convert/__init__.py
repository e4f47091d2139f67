"""Source registry: built-in framework readers plus third-party ones from the
``mconv.sources`` entry-point group, each detecting its files by content.

Detection asks the sources in order: the built-ins that claim specific files (a Keras
zip before PyTorch's zips), then plugins, then the ONNX fallback. A plugin that fails to
import is listed with its error instead of breaking detection.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from mconv.convert.base import ExportOptions, Source, SourceExport
from mconv.errors import InputError, UsageError

__all__ = ["ExportOptions", "Source", "SourceExport", "all_sources", "detect", "get_source", "register"]

# name -> "module:Class" for the built-ins (imported lazily), in detection order.
_BUILTIN = {
    "tf": "mconv.convert.tf:TensorFlowSource",
    "paddle": "mconv.convert.paddle:PaddleSource",
    "caffe": "mconv.convert.caffe_source:CaffeSource",
    "torch": "mconv.convert.torch:TorchSource",
    "onnx": "mconv.convert.onnx:OnnxSource",
}


@dataclass
class SourceEntry:
    name: str
    origin: str  # "builtin" or the plugin's entry point
    loader: str | type[Source]
    error: str | None = None
    _obj: Source | None = None

    def load(self) -> Source:
        if self._obj is None:
            cls = self.loader
            if isinstance(cls, str):
                mod, _, attr = cls.partition(":")
                cls = getattr(importlib.import_module(mod), attr)
            self._obj = cls()
        return self._obj


_registry: dict[str, SourceEntry] = {}
_loaded_plugins = False


def register(cls: type[Source], *, origin: str = "api") -> type[Source]:
    """Register a source class; duplicate names are rejected."""
    _ensure()
    if cls.name in _registry:
        raise ValueError(f"source name '{cls.name}' is already registered")
    _registry[cls.name] = SourceEntry(cls.name, origin, cls)
    return cls


def unregister(name: str) -> None:
    _registry.pop(name, None)


def _ensure() -> None:
    global _loaded_plugins
    if not _registry:
        for name, path in _BUILTIN.items():
            _registry[name] = SourceEntry(name, "builtin", path)
    if _loaded_plugins:
        return
    _loaded_plugins = True
    for ep in entry_points(group="mconv.sources"):
        if ep.name in _registry:
            continue  # a plugin cannot shadow a built-in
        entry = SourceEntry(ep.name, f"plugin {ep.value}", ep.value)
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Source)):
                raise TypeError(f"{ep.value} is not a mconv.convert.Source subclass")
            entry.loader = cls
        except Exception as e:
            entry.error = f"{type(e).__name__}: {e}"
        _registry[ep.name] = entry


def all_sources() -> list[SourceEntry]:
    """Every registered source, in detection order (the fallback last)."""
    _ensure()
    entries = list(_registry.values())
    return [e for e in entries if not _is_fallback(e)] + [e for e in entries if _is_fallback(e)]


def _is_fallback(entry: SourceEntry) -> bool:
    if entry.error:
        return False
    try:
        return entry.load().fallback
    except Exception as e:  # a broken plugin is skipped by detection and listed with its error
        if entry.origin == "builtin":
            raise
        entry.error = f"{type(e).__name__}: {e}"
        return False


def get_source(name: str) -> Source:
    """A source by name; unknown or broken ones are a usage error."""
    _ensure()
    entry = _registry.get(name)
    if entry is None:
        raise UsageError(f"source '{name}': unknown; choose one of {', '.join(_registry)}")
    if entry.error:
        raise UsageError(f"source '{name}': the plugin failed to import: {entry.error}")
    return entry.load()


def detect(path: Path) -> Source:
    """The source that claims ``path`` (by content); the ONNX fallback claims any plain file."""
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    for entry in all_sources():
        if entry.error:
            continue
        src = entry.load()
        try:
            claimed = src.detect(path)
        except Exception as e:  # a plugin's broken detection must not stop the others
            if entry.origin == "builtin":
                raise
            entry.error = f"detect() failed: {type(e).__name__}: {e}"
            continue
        if claimed:
            return src
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(
            f"{path}: a folder that holds no model mconv reads (a TensorFlow SavedModel or one Paddle "
            "model/params pair); give the model file"
        )
    raise InputError(f"{path}: not a model file mconv reads")
