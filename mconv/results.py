"""What the library returns: one dataclass per job, serialised only at the edges.

``to_json()`` gives the object the CLI prints with ``--json`` and runs record; nothing
inside the library parses it back. Verification is a :class:`~mconv.metrics.Comparison`
(per output: :class:`~mconv.metrics.OutputMetrics`), files are paths, the artifact is the
target's :class:`~mconv.targets.base.Artifact`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mconv.metrics import Comparison
from mconv.targets.base import Artifact


def json_safe(o: Any) -> Any:
    """Non-finite floats as text, paths as text: JSON-ready."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return json_safe(o.item())
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


@dataclass
class Verification:
    """An artifact checked against a reference on some samples."""

    reference: str  # "onnxruntime" | "torch"
    tolerance: str
    comparison: Comparison
    samples: int | None = None
    floor_probe: str | None = None  # build: whether the rounding floor was measured

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reference": self.reference}
        if self.samples is not None:
            out["samples"] = self.samples
        out["tolerance"] = self.tolerance
        if self.samples is not None:
            out["floor_probe"] = self.floor_probe
        return {**out, **self.comparison.to_json()}


@dataclass
class ExportResult:
    """``mconv.export``: a framework's source written as a checked ONNX file."""

    source: Path
    files: list[Path]
    exporter: str
    opset: int
    nodes: int
    warnings: list[str] = field(default_factory=list)
    verification: Verification | None = None
    seconds: float = 0.0
    source_kind: str = "torch"  # the source registry's name for the framework

    @property
    def onnx(self) -> Path:
        return self.files[0]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command": "export",
            "source": str(self.source),
            "source_kind": self.source_kind,
            "exporter": self.exporter,
            "opset": self.opset,
            "nodes": self.nodes,
            "warnings": list(self.warnings),
        }
        if self.verification is not None:
            out["verification"] = self.verification.to_json()
        out["artifacts"] = [str(f) for f in self.files]
        out["seconds"] = round(self.seconds, 3)
        return json_safe(out)


@dataclass
class OptimizeResult:
    """``mconv.optimize``: an ONNX model through passes."""

    source: Path
    files: list[Path]
    nodes_before: int
    nodes_after: int
    passes: list[Any] = field(default_factory=list)  # passes.base.PassReport
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def onnx(self) -> Path:
        return self.files[0]

    def to_json(self) -> dict[str, Any]:
        return json_safe(
            {
                "warnings": list(self.warnings),
                "command": "optimize",
                "source": str(self.source),
                "nodes_before": self.nodes_before,
                "nodes_after": self.nodes_after,
                "passes": [p.to_json() for p in self.passes],
                "seconds": round(self.seconds, 3),
                "artifacts": [str(f) for f in self.files],
            }
        )


@dataclass
class BuildResult:
    """``mconv.build``: a target artifact, verified unless asked not to be."""

    source: Path
    source_kind: str
    target: str
    precision: str
    artifact: Artifact | None  # None only while the build is under way
    passes: list[Any] = field(default_factory=list)  # passes.base.PassReport
    warnings: list[str] = field(default_factory=list)
    verification: Verification | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the target options used
    seconds: float = 0.0

    @property
    def files(self) -> list[Path]:
        return [] if self.artifact is None else list(self.artifact.files)

    @property
    def passed(self) -> bool:
        return self.verification is None or self.verification.passed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "command": "build",
            "source": str(self.source),
            "source_kind": self.source_kind,
            "target": self.target,
            "precision": self.precision,
            "options": dict(self.options),
            "passes": [p.to_json() for p in self.passes],
        }
        if self.verification is not None:
            out["verification"] = self.verification.to_json()
        if self.artifact is not None:
            out["artifacts"] = [str(f) for f in self.artifact.files]
            out["artifact"] = self.artifact.to_json()
        out["warnings"] = list(self.warnings)
        out["seconds"] = round(self.seconds, 3)
        return json_safe(out)


@dataclass
class TargetFailure:
    """A target of a multi-target build that failed (its message and exit code)."""

    target: str
    error: str
    exit_code: int
    report: dict[str, Any] | None = None  # what the failed build reported (its verification)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.report or {})
        out.update(target=self.target, status="failed", error=self.error, exit_code=self.exit_code)
        return json_safe(out)


@dataclass
class MultiBuildResult:
    """``mconv.build`` with several targets: one export and one pass pipeline, then each
    target in order (a result or a failure each); ``exit_code`` is the worst."""

    source: Path
    precision: str
    outcomes: list[BuildResult | TargetFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def results(self) -> list[BuildResult]:
        return [o for o in self.outcomes if isinstance(o, BuildResult)]

    @property
    def failures(self) -> list[TargetFailure]:
        return [o for o in self.outcomes if isinstance(o, TargetFailure)]

    @property
    def exit_code(self) -> int:
        from mconv.errors import exit_code_of

        return exit_code_of(f.exit_code for f in self.failures)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        targets = [
            {**o.to_json(), "status": "ok"} if isinstance(o, BuildResult) else o.to_json() for o in self.outcomes
        ]
        return json_safe(
            {
                "command": "build",
                "source": str(self.source),
                "precision": self.precision,
                "ok": self.passed,
                "exit_code": self.exit_code,
                "targets": targets,
                "artifacts": [a for t in targets for a in t.get("artifacts", [])],
                "seconds": round(self.seconds, 3),
            }
        )


class _Row:
    """A report row: the declared fields, plus what else the row carries (``extra``)."""

    @classmethod
    def from_json(cls, row: dict[str, Any]):
        names = [f.name for f in fields(cls) if f.name != "extra"]
        values = {n: row[n] for n in names if n in row}
        values["path"] = Path(row["path"])
        return cls(**values, extra={k: v for k, v in row.items() if k not in names})

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return json_safe({**out, **self.extra})


@dataclass
class ArtifactCheck(_Row):
    """One artifact's row of ``mconv.verify``."""

    path: Path
    target: str
    precision: str
    status: str  # "passed" | "failed" | "error" | "skipped"
    passed: bool
    error: str | None = None
    exit_code: int | None = None
    tolerance: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # locate findings and the like


@dataclass
class VerifyResult:
    """``mconv.verification``: every artifact against the source."""

    source: Path
    source_kind: str
    inputs: str
    samples: int
    floor_probe: str | None
    results: list[ArtifactCheck]
    reference: str = "onnxruntime"

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @classmethod
    def from_json(cls, report: dict[str, Any]) -> VerifyResult:
        return cls(
            Path(report["source"]),
            report["source_kind"],
            report["inputs"],
            report["samples"],
            report.get("floor_probe"),
            [ArtifactCheck.from_json(r) for r in report["results"]],
            report.get("reference", "onnxruntime"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "command": "verify",
            "source": str(self.source),
            "source_kind": self.source_kind,
            "reference": self.reference,
            "inputs": self.inputs,
            "samples": self.samples,
            "floor_probe": self.floor_probe,
            "passed": self.passed,
            "results": [r.to_json() for r in self.results],
        }


@dataclass
class Timing(_Row):
    """One artifact's row of ``mconv.bench`` (latencies in milliseconds)."""

    path: Path
    target: str
    precision: str
    status: str  # "ok" | "error" | "skipped"
    error: str | None = None
    exit_code: int | None = None
    load_ms: float | None = None
    latency_ms: dict[str, float] | None = None  # median, p90, p99, min, mean
    throughput: float | None = None
    peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float | None:
        return (self.latency_ms or {}).get("median")


@dataclass
class BenchResult:
    """``mconv.benchmark``: every artifact timed in its own child process."""

    results: list[Timing]
    settings: dict[str, Any] = field(default_factory=dict)  # threads, warmup, iters, seconds, batch

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)

    @classmethod
    def from_json(cls, report: dict[str, Any]) -> BenchResult:
        settings = {k: v for k, v in report.items() if k not in ("command", "results")}
        return cls([Timing.from_json(r) for r in report["results"]], settings)

    def to_json(self) -> dict[str, Any]:
        return {"command": "bench", **self.settings, "results": [r.to_json() for r in self.results]}
