"""Target registry: built-in writers plus third-party ones from the ``mconv.targets``
entry-point group. A plugin that fails to import is listed with its error instead of
breaking the CLI."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points

from mconv.errors import ConversionError, UsageError
from mconv.targets.base import Artifact, BuildOptions, Runner, Target
from mconv.targets.options import OptionSpec

__all__ = [
    "Artifact",
    "BuildOptions",
    "Runner",
    "Target",
    "all_targets",
    "declared_options",
    "find_entry",
    "get_target",
    "register",
]

# name -> "module:Class" for the built-ins (imported lazily).
_BUILTIN = {
    "onnx": "mconv.targets.onnx:OnnxTarget",
    "ncnn": "mconv.targets.ncnn:NcnnTarget",
    "openvino": "mconv.targets.openvino:OpenVinoTarget",
    "trt": "mconv.targets.tensorrt:TensorRTTarget",
    "mnn": "mconv.targets.mnn:MnnTarget",
    "litert": "mconv.targets.litert:LiteRtTarget",
    "tvm": "mconv.targets.tvm:TvmTarget",
}


@dataclass
class TargetEntry:
    name: str
    source: str  # "builtin" or the plugin's distribution/entry point
    loader: str | type[Target]
    error: str | None = None
    _cls: type[Target] | None = None

    def load(self) -> type[Target]:
        if self._cls is None:
            if isinstance(self.loader, str):
                mod, _, attr = self.loader.partition(":")
                self._cls = getattr(importlib.import_module(mod), attr)
            else:
                self._cls = self.loader
        return self._cls


_registry: dict[str, TargetEntry] = {}
_aliases: dict[str, str] = {"tensorrt": "trt", "ov": "openvino", "tflite": "litert"}
_loaded_plugins = False


def register(cls: type[Target], *, source: str = "api") -> type[Target]:
    """Register a target class; duplicate names are rejected."""
    _ensure()
    for n in (cls.name, *cls.aliases):
        if n in _registry or n in _aliases:
            raise ValueError(f"target name '{n}' is already registered")
    _registry[cls.name] = TargetEntry(cls.name, source, cls)
    for a in cls.aliases:
        _aliases[a] = cls.name
    return cls


def unregister(name: str) -> None:
    entry = _registry.pop(name, None)
    if entry is not None and entry._cls is not None:
        for a in entry._cls.aliases:
            _aliases.pop(a, None)


def _ensure() -> None:
    global _loaded_plugins
    if not _registry:
        for name, path in _BUILTIN.items():
            _registry[name] = TargetEntry(name, "builtin", path)
    if _loaded_plugins:
        return
    _loaded_plugins = True
    for ep in entry_points(group="mconv.targets"):
        if ep.name in _registry or ep.name in _aliases:
            continue  # a plugin cannot shadow a built-in
        entry = TargetEntry(ep.name, f"plugin {ep.value}", ep.value)
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Target)):
                raise TypeError(f"{ep.value} is not a mconv.targets.Target subclass")
            entry.loader = cls
            for a in getattr(cls, "aliases", ()):
                _aliases.setdefault(a, ep.name)
        except Exception as e:
            entry.error = f"{type(e).__name__}: {e}"
        _registry[ep.name] = entry


def all_targets() -> list[TargetEntry]:
    _ensure()
    return [_registry[k] for k in sorted(_registry)]


def declared_options() -> dict[str, list[tuple[str, OptionSpec]]]:
    """Option name -> (target name, its declaration) for every loadable target."""
    out: dict[str, list[tuple[str, OptionSpec]]] = {}
    for entry in all_targets():
        if entry.error:
            continue
        try:
            specs = entry.load().Options.specs()
        except Exception:  # a broken plugin shows in `mconv targets`, not here
            continue
        for s in specs:
            out.setdefault(s.name, []).append((entry.name, s))
    return out


def find_entry(name: str) -> TargetEntry:
    """The registry entry of a target name or alias; unknown or broken ones are a usage error."""
    _ensure()
    key = _aliases.get(name, name)
    entry = _registry.get(key)
    if entry is None:
        known = ", ".join(sorted(set(_registry) | set(_aliases)))
        raise UsageError(f"--target '{name}': unknown target; choose one of {known} (see `mconv targets`)")
    if entry.error:
        raise UsageError(f"--target '{name}': the plugin failed to import: {entry.error}")
    return entry


def get_target(name: str) -> Target:
    """Instantiate a target by name or alias; unknown names are a usage error."""
    entry = find_entry(name)
    try:
        return entry.load()()
    except Exception as e:
        entry.error = f"{type(e).__name__}: {e}"
        raise ConversionError(f"--target '{name}': the target failed to load: {entry.error}") from e
