"""The lowering-rule table: ONNX op type -> function that emits ncnn layers.

Rules register with :func:`rule`; rule modules (``rules_*.py``, one per op family)
are imported once by :func:`rules`. Duplicate registrations are an error, so two
modules can never silently fight over an op.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

RuleFn = "Callable[[Ctx, Node], None]"

_RULES: dict[str, Callable] = {}
_FAMILIES = (
    "rules_activation",
    "rules_attention",
    "rules_conv",
    "rules_einsum",
    "rules_elementwise",
    "rules_linear",
    "rules_logic",
    "rules_norm",
    "rules_pool",
    "rules_reduce",
    "rules_resize",
    "rules_rnn",
    "rules_shape",
)
_loaded = False


def rule(*op_types: str) -> Callable[[Callable], Callable]:
    """Register the decorated function as the lowering of ``op_types``."""

    def deco(fn: Callable) -> Callable:
        for op in op_types:
            if op in _RULES:
                raise ValueError(f"ncnn rule for {op} registered twice ({fn.__module__})")
            _RULES[op] = fn
        return fn

    return deco


def rules() -> dict[str, Callable]:
    """The complete table (imports every rule family on first use)."""
    global _loaded
    if not _loaded:
        for mod in _FAMILIES:
            importlib.import_module(f"mconv.targets.ncnn.{mod}")
        _loaded = True
    return _RULES
