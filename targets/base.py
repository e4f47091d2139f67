"""The target-writer interface.

A target declares its name(s), the pip extra that provides its runtime, the ONNX
ops it lowers, the passes it needs before writing, ``write()`` that turns an ONNX
model into files, and ``runner()`` that runs those files on feeds. Runners follow
a template method: :meth:`Runner.infer` validates feeds, then calls
:meth:`Runner.infer_impl`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from mconv.errors import ConversionError, InputError, UsageError
from mconv.graphinfo import TensorInfo, nodes_by_op
from mconv.targets.options import PRECISIONS, TargetOptions, option

Feeds = dict[str, np.ndarray]

__all__ = ["PRECISIONS", "Artifact", "BuildOptions", "Finding", "Runner", "Target", "TargetOptions", "option"]


def ignore_option() -> Any:
    """The ``ignore`` option the INT8 quantizers share (declared per target that takes it)."""
    return option(
        [],
        help="Node name or op type kept in float (repeat per entry).",
        precisions=("int8",),
        flag="--ignore",
        metavar="NODE_OR_OP",
    )


@dataclass
class BuildOptions:
    """What a writer is asked to do.

    ``calib``: calibration samples (already loaded) for int8. ``target``: the target's own
    options (an instance of its ``Options`` class). ``input_shapes``: name -> shape the
    user fixed; ``batch``: the first axis of every input, if fixed;
    ``calib_count_requested``: how many calibration samples were asked for (to warn
    when fewer were found).
    """

    precision: str = "fp32"
    calib: list[Feeds] | None = None
    target: TargetOptions = field(default_factory=TargetOptions)
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    batch: int | None = None
    calib_count_requested: int | None = None


@dataclass
class Artifact:
    """Files a target wrote. ``main`` is the file users pass around (``.param``,
    ``.xml``, ``.engine``, ``.onnx``); ``files`` lists everything written."""

    target: str
    main: Path
    files: list[Path]
    precision: str = "fp32"
    meta: dict[str, Any] = field(default_factory=dict)

    def relocated(self, old_dir: Path, new_dir: Path) -> Artifact:
        def move(p: Path) -> Path:
            return new_dir / p.relative_to(old_dir)

        return Artifact(self.target, move(self.main), [move(p) for p in self.files], self.precision, dict(self.meta))

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "main": str(self.main),
            "files": [str(f) for f in self.files],
            "precision": self.precision,
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, d: dict) -> Artifact:
        return cls(
            d["target"], Path(d["main"]), [Path(f) for f in d["files"]], d.get("precision", "fp32"), d.get("meta", {})
        )


@dataclass
class Finding:
    """One preflight finding (``mconv inspect`` lists them; ``error`` ones block a build).

    ``nodes`` names the nodes, inputs or initializers concerned.
    """

    severity: str  # "error" | "warning" | "info"
    code: str
    message: str
    nodes: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> bool:
        return self.severity == "error"

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message, "nodes": list(self.nodes)}

    def __str__(self) -> str:
        shown = ", ".join(self.nodes[:5]) + (", ..." if len(self.nodes) > 5 else "")
        return f"[{self.code}] {self.message}" + (f" (nodes: {shown})" if shown else "")


def dims_of(values) -> tuple[int | None, ...]:
    """Dims from text or numbers; anything not a positive integer is unknown (None)."""
    out: list[int | None] = []
    for v in values:
        try:
            d = int(v)
        except (TypeError, ValueError):
            d = -1
        out.append(d if d > 0 else None)
    return tuple(out)


class Runner(ABC):
    """Runs an artifact. Subclasses implement ``load`` and ``infer_impl``."""

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        self.artifact = artifact
        self.threads = threads

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def input_names(self) -> list[str]: ...

    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def infer_impl(self, feeds: Feeds) -> Feeds: ...

    def infer(self, feeds: Feeds) -> Feeds:
        expected = self.input_names()
        missing = [n for n in expected if n not in feeds]
        if missing:
            raise InputError(
                f"{self.artifact.main}: inputs {missing} were not given (the artifact takes "
                f"{expected}, got {sorted(feeds)})"
            )
        return self.infer_impl({n: np.ascontiguousarray(feeds[n]) for n in expected})


class Target(ABC):
    """A backend writer. Subclasses set the class attributes and implement ``write``."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""  # pip extra providing the runtime, e.g. "ncnn"
    description: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    # Run the runner in a child process when verifying (runtimes that can crash natively).
    isolate: ClassVar[bool] = False
    # Passes (by registry name) the writer needs after the default pipeline.
    required_passes: ClassVar[tuple[str, ...]] = ()
    # Op domains besides the default one that the runtime understands.
    known_domains: ClassVar[tuple[str, ...]] = ("ai.onnx.ml",)
    # What users pass to verify/bench, for messages: e.g. "ncnn .param (+ .bin)".
    artifact_kind: ClassVar[str] = ""
    # The runtime has no batch axis: an input may drop (or gain) a leading 1.
    batchless: ClassVar[bool] = False
    # Distributions (pip names) whose installed versions run reports record, e.g. ("openvino", "nncf").
    runtime_packages: ClassVar[tuple[str, ...]] = ()
    # Modules whose import proves the runtime is there (the default runtime_missing checks them).
    runtime_modules: ClassVar[tuple[str, ...]] = ()
    # The target's own options (a TargetOptions dataclass; see mconv.targets.options).
    Options: ClassVar[type[TargetOptions]] = TargetOptions

    def make_options(self, values: dict[str, Any] | None = None, *, precision: str | None = None) -> TargetOptions:
        """This target's options from ``values`` (name -> text or value), validated."""
        return self.Options.from_values(values, target=self.name, precision=precision)

    def options_of(self, options: BuildOptions) -> Any:
        """``options.target`` as this target's ``Options`` (defaults when none were given)."""
        given = options.target
        if isinstance(given, self.Options):
            return given
        if type(given) is TargetOptions:
            return self.Options()
        raise UsageError(f"target '{self.name}' takes {self.Options.__name__}, not {type(given).__name__}")

    def supported_ops(self) -> set[str] | None:
        """Op types this target lowers; None means "whatever the runtime takes"."""
        return None

    def unsupported(self, model: onnx.ModelProto) -> dict[str, list[str]]:
        """Op type -> node names this target cannot lower (empty when all are fine)."""
        ops = self.supported_ops()
        found = nodes_by_op(model)
        if ops is not None:
            return {op: names for op, names in found.items() if op not in ops}
        # No op table: at least the ops of domains nobody but their author knows.
        local = {f"{f.domain}::{f.name}" for f in model.functions}
        return {
            op: names
            for op, names in found.items()
            if "::" in op and op not in local and op.split("::")[0] not in self.known_domains
        }

    def runtime_missing(self) -> str | None:
        """A one-line reason when the runtime (or hardware) is unavailable, else None: by
        default, the first of :attr:`runtime_modules` that does not import."""
        import importlib

        for module in self.runtime_modules:
            try:
                importlib.import_module(module)
            except ImportError as e:
                return f"the runtime module '{module}' is not importable ({e})"
        return None

    def install_hint(self) -> str:
        """The command that installs this target's runtime ("" when nothing is needed)."""
        return f"pip install 'mconv[{self.extra}]'" if self.extra else ""

    def missing_runtime_message(self) -> str | None:
        """:meth:`runtime_missing` with the install hint, the one line users see; None when available."""
        reason = self.runtime_missing()
        if reason is None:
            return None
        hint = self.install_hint()
        if hint and "pip install" not in reason:
            reason += f"; install it with `{hint}`"
        return reason

    def preflight(self, model: onnx.ModelProto, options: BuildOptions) -> list[str]:
        """Check the model before writing: raise MconvError on blockers, return warnings."""
        return []

    def findings(self, model: onnx.ModelProto, options: BuildOptions) -> list[Finding]:
        """What ``mconv inspect`` lists for this target beyond unsupported ops (nothing raises)."""
        return []

    @abstractmethod
    def write(self, model: onnx.ModelProto, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        """Write the artifact's files into ``out_dir`` (a staging folder) and describe them.

        The writer may consume ``model`` (e.g. move multi-GB weights to disk instead of
        copying them); callers must not use it afterwards.
        """

    @abstractmethod
    def runner(self, artifact: Artifact, *, threads: int | None = None) -> Runner:
        """A runner for an artifact this target wrote (or recognised), ready to run: its
        ``load()`` has been called (here or, lazily, by its own methods)."""

    @classmethod
    def recognise(cls, path: Path) -> Artifact | None:
        """Return an Artifact if ``path`` is one of this target's files (by content)."""
        return None

    def artifact_inputs(self, artifact: Artifact) -> list[TensorInfo] | None:
        """The inputs an artifact takes (name, shape, dtype); None when unknown.

        The default reads what the writer recorded in ``artifact.meta["inputs"]``;
        targets override it to read their own files.
        """
        metas = artifact.meta.get("inputs") if isinstance(artifact.meta, dict) else None
        if metas and all(isinstance(m, dict) and "shape" in m for m in metas):
            return [
                TensorInfo(m["name"], None if m["shape"] is None else dims_of(m["shape"]), m.get("dtype") or "float32")
                for m in metas
            ]
        return None

    def artifact_summary(self, artifact: Artifact) -> dict[str, Any]:
        """What ``mconv inspect ARTIFACT`` adds for this target's files (JSON-able; by
        default nothing)."""
        return {}

    def probe_artifact(self, artifact: Artifact, names: list[str], workdir: Path) -> tuple[Artifact, dict]:
        """An artifact whose outputs are those of ``names`` (ONNX tensor names) it computes,
        for ``verify --locate``; files it needs go to ``workdir``.

        Returns the probe and, where known, the artifact's own node (name, op type)
        producing each tensor.

        Raises:
            ConversionError: this target offers no intermediate tensors.
        """
        raise ConversionError(f"{artifact.main}: --locate is not supported for {self.name} artifacts")

    def verify_feeds(self, feeds: Feeds) -> Feeds:
        """Adapt feeds before running (e.g. a target without a batch axis)."""
        return feeds

    def default_tolerance(self, precision: str):
        from mconv.metrics import default_tolerance

        return default_tolerance(precision)
