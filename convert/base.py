"""The source-framework interface.

A source declares its name, the framework it reads, the pip extra that provides that
framework, ``detect(path)`` (by content, cheap: no framework import) and ``export(path,
options)``, which turns the file into an in-memory ONNX model together with sample feeds
and the framework's own outputs on them (what export verification compares onnxruntime
against). Third-party sources register through the ``mconv.sources`` entry-point group.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mconv.errors import ConversionError, UsageError
from mconv.specs import DynamicAxis, InputSpec

Feeds = dict[str, np.ndarray]
LAYOUTS = ("nchw", "nhwc")
DEFAULT_OPSET = 17


@dataclass
class ExportOptions:
    """What every source may be told; each source uses the fields that apply to it."""

    model_spec: str | None = None
    inputs: list[InputSpec] = field(default_factory=list)
    dynamic: list[DynamicAxis] = field(default_factory=list)
    opset: int | None = None
    exporter: str = "auto"
    trust_pickle: bool = False
    weights: Path | None = None  # the weights half of a two-file source (Caffe's .caffemodel)
    layout: str | None = None  # None: the framework's own; "nchw" moves an NHWC source's transposes inside


@dataclass
class SourceExport:
    """A source as ONNX, with the framework's own outputs on ``feeds`` (the reference)."""

    model: Any  # onnx.ModelProto
    exporter: str
    reference: list[np.ndarray]
    feeds: Feeds
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


class Source(ABC):
    """One source framework: detection by content and export to ONNX."""

    name: ClassVar[str]
    framework: ClassVar[str]  # as users call it, for messages ("PyTorch", "PaddlePaddle")
    extra: ClassVar[str | None] = None  # the pip extra that installs the framework
    description: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()  # stripped by stem()
    layouts: ClassVar[tuple[str, ...]] = ()  # the --layout values that apply (first: the default)
    # Tried after every other source: the ONNX source claims what nothing else does.
    fallback: ClassVar[bool] = False
    # False for ONNX itself, which is loaded, not exported.
    exports: ClassVar[bool] = True
    takes_weights: ClassVar[bool] = False  # whether --weights names a second file of the model

    @abstractmethod
    def detect(self, path: Path) -> bool:
        """Whether ``path`` is this framework's model; reads at most a few KiB, imports nothing heavy."""

    @abstractmethod
    def export(self, path: Path, opts: ExportOptions) -> SourceExport:
        """The model at ``path`` as ONNX, with feeds and the framework's outputs on them."""

    def stem(self, path: Path) -> str:
        """The name outputs are called after (``<stem>.onnx``, ``<stem>_<target>/``)."""
        name = path.name
        for suffix in self.suffixes:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)] or "model"
        return path.stem or "model"

    def check_options(self, opts: ExportOptions) -> None:
        """Options that do not apply to this source are usage errors, before any work."""
        if opts.weights is not None and not self.takes_weights:
            raise UsageError(f"--weights {opts.weights}: a {self.framework} source takes no separate weights file")
        self.check_layout(opts)

    def check_layout(self, opts: ExportOptions) -> str | None:
        """The layout asked for, refused where it does not apply (usage error)."""
        if opts.layout is None:
            return None
        if opts.layout not in LAYOUTS:
            raise UsageError(f"--layout {opts.layout}: choose one of {', '.join(LAYOUTS)}")
        if opts.layout not in self.layouts:
            have = f"it takes {', '.join(self.layouts)}" if self.layouts else "its inputs keep their layout"
            raise UsageError(f"--layout {opts.layout}: does not apply to a {self.framework} source ({have})")
        return opts.layout


def sample_feeds(model: Any, opts: ExportOptions, *, seed: int = 0) -> Feeds:
    """One deterministic sample for the exported model's inputs (``--input`` fixes shapes)."""
    from mconv.data import random_feeds
    from mconv.graphinfo import graph_inputs

    shapes = {s.name: s.shape for s in opts.inputs}
    return random_feeds(graph_inputs(model), seed=seed, count=1, shapes=shapes)[0]


def private_home_env(home: str) -> dict[str, str]:
    """The environment of an exporter's child: a private ``HOME`` (and matplotlib folder).

    Frameworks write into the user's home when imported: Paddle creates
    ``~/.cache/paddle/dataset``, Keras ``~/.keras/keras.json`` (which then sets the user's
    later Keras sessions), matplotlib (imported by TensorFlow) its config and font cache. In
    the child they go to ``home``, removed afterwards. A ``KERAS_HOME`` or ``MPLCONFIGDIR``
    the user set stays: that configuration is theirs to have read.
    """
    env = {"HOME": home}
    if "MPLCONFIGDIR" not in os.environ:  # else matplotlib follows XDG_CONFIG_HOME/XDG_CACHE_HOME
        env["MPLCONFIGDIR"] = os.path.join(home, "matplotlib")
    return env


def export_isolated(func_path: str, path: Path, opts: ExportOptions, what: str, /, **kwargs: Any) -> dict[str, Any]:
    """Run a framework's exporter, ``func_path(opset=, shapes=, **kwargs)``, in a child process.

    A child keeps the framework's import (threads, loggers, its environment changes) out of
    mconv's process; it returns ``{"model": ONNX bytes, "feeds": ..., "reference": [...]}``,
    and the model comes back parsed.
    """
    import onnx

    from mconv.isolate import IsolatedFailure, call_isolated

    kwargs.update(opset=opts.opset or DEFAULT_OPSET, shapes={s.name: list(s.shape) for s in opts.inputs})
    try:
        with tempfile.TemporaryDirectory(prefix="mconv-home-") as home:
            out = call_isolated(func_path, kwargs, what=what, env=private_home_env(home))
    except IsolatedFailure as e:
        if e.kind == "error" and getattr(e, "traceback", None) is None:
            raise  # an mconv error raised in the child: its message and exit code as they are
        raise ConversionError(f"{path}: {e.message}") from None
    out["model"] = onnx.load_from_string(out["model"])
    return out
