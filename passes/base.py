"""The pass interface: small classes named ``<Verb><Object>Pass`` that take an ONNX
ModelProto and return a :class:`PassResult` saying whether they changed it."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class PassReport:
    name: str
    nodes_before: int
    nodes_after: int
    modified: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "pass": self.name,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "modified": self.modified,
            "seconds": round(self.seconds, 4),
            "notes": self.notes,
        }


class Pass(ABC):
    """One ONNX -> ONNX rewrite. ``name`` is the registry key."""

    name: ClassVar[str]

    @abstractmethod
    def call(self, model: onnx.ModelProto) -> PassResult: ...

    def __call__(self, model: onnx.ModelProto) -> tuple[PassResult, PassReport]:
        before = len(model.graph.node)
        t0 = time.perf_counter()
        result = self.call(model)
        report = PassReport(
            self.name, before, len(result.model.graph.node), result.modified, time.perf_counter() - t0, result.notes
        )
        return result, report
