"""Numerical comparison of outputs: one implementation of metrics and tolerances,
shared by export, build and ``mconv verify``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """An output passes if every set bound holds.

    ``rtol``: max |got - ref| <= rtol * max |ref| + atol. ``min_cos``: cosine >= min_cos.
    """

    rtol: float | None = None
    atol: float = 0.0
    min_cos: float | None = None

    def describe(self) -> str:
        parts = []
        if self.rtol is not None:
            parts.append(f"rel<={self.rtol:g}" + (f" atol={self.atol:g}" if self.atol else ""))
        if self.min_cos is not None:
            parts.append(f"cos>={self.min_cos:g}")
        return ", ".join(parts) or "none"


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(rtol=1e-4),
    "fp16": Tolerance(min_cos=0.9999),
    "int8": Tolerance(min_cos=0.99),
}


def default_tolerance(precision: str) -> Tolerance:
    return DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])


@dataclass
class OutputMetrics:
    name: str
    shape: list[int]
    max_abs: float
    rel: float
    mean_abs: float
    cosine: float
    ref_max: float = 0.0
    top1: float | None = None
    top5: float | None = None
    passed: bool = True
    reason: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = str(v)
        return d


def _looks_like_scores(ref: np.ndarray) -> bool:
    return ref.ndim == 2 and ref.shape[1] >= 10 and np.issubdtype(ref.dtype, np.floating)


def compare_arrays(name: str, ref: np.ndarray, got: np.ndarray) -> OutputMetrics:
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        if ref.size == got.size:
            got = got.reshape(ref.shape)
        else:
            return OutputMetrics(
                name,
                list(ref.shape),
                math.inf,
                math.inf,
                math.inf,
                0.0,
                passed=False,
                reason=f"shape {list(got.shape)} != expected {list(ref.shape)}",
            )
    r = ref.astype(np.float64).ravel()
    g = got.astype(np.float64).ravel()
    if r.size == 0:
        return OutputMetrics(name, list(ref.shape), 0.0, 0.0, 0.0, 1.0)
    finite = np.isfinite(r) & np.isfinite(g)
    same_nonfinite = (~np.isfinite(r)) & (~np.isfinite(g)) & ((r == g) | (np.isnan(r) & np.isnan(g)))
    if not np.all(finite | same_nonfinite):
        return OutputMetrics(
            name, list(ref.shape), math.inf, math.inf, math.inf, 0.0, passed=False, reason="non-finite values differ"
        )
    r, g = r[finite], g[finite]
    if r.size == 0:
        return OutputMetrics(name, list(ref.shape), 0.0, 0.0, 0.0, 1.0)
    diff = np.abs(g - r)
    max_abs = float(diff.max())
    scale = float(np.abs(r).max())
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    if nr == 0 and ng == 0:
        cos = 1.0
    elif nr == 0 or ng == 0:
        cos = 0.0
    else:
        cos = float(np.dot(r, g) / (nr * ng))
    m = OutputMetrics(name, list(ref.shape), max_abs, rel, float(diff.mean()), cos, ref_max=scale)
    if _looks_like_scores(ref) and ref.shape == got.shape:
        rt = np.argsort(-ref, axis=1)
        gt = np.argsort(-got, axis=1)
        m.top1 = float(np.mean(rt[:, 0] == gt[:, 0]))
        k = min(5, ref.shape[1])
        m.top5 = float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(rt, gt)]))
    return m


def apply_tolerance(m: OutputMetrics, tol: Tolerance) -> OutputMetrics:
    if m.reason:
        m.passed = False
        return m
    fails = []
    if tol.rtol is not None and m.max_abs > tol.rtol * m.ref_max + tol.atol:
        fails.append(f"rel {m.rel:.3g} > {tol.rtol:g}")
    if tol.min_cos is not None and m.cosine < tol.min_cos:
        fails.append(f"cos {m.cosine:.6f} < {tol.min_cos:g}")
    m.passed = not fails
    m.reason = "; ".join(fails)
    return m


@dataclass
class Comparison:
    """Metrics for every output over every sample (worst case kept per output)."""

    outputs: list[OutputMetrics] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def worst(self) -> OutputMetrics | None:
        return max(self.outputs, key=lambda o: (not o.passed, o.rel), default=None)

    def to_json(self) -> dict:
        return {"passed": self.passed, "outputs": [o.to_json() for o in self.outputs]}

    def summary(self) -> str:
        w = self.worst()
        if w is None:
            return "no outputs"
        return f"worst output '{w.name}': max abs {w.max_abs:.3g}, rel {w.rel:.3g}, cos {w.cosine:.6f}" + (
            f" ({w.reason})" if w.reason else ""
        )


def compare_outputs(
    refs: list[dict[str, np.ndarray]],
    gots: list[dict[str, np.ndarray]],
    tol: Tolerance,
    names: list[str] | None = None,
) -> Comparison:
    """Compare per output over all samples; metrics are over the samples concatenated."""
    names = names or list(refs[0].keys())
    comp = Comparison()
    for name in names:
        if any(name not in g for g in gots):
            comp.outputs.append(
                OutputMetrics(
                    name, [], math.inf, math.inf, math.inf, 0.0, passed=False, reason="output missing from the artifact"
                )
            )
            continue
        ref = np.concatenate([np.asarray(r[name]).reshape(1, -1) for r in refs], axis=0)
        got_list = [np.asarray(g[name]) for g in gots]
        if any(g.size != np.asarray(r[name]).size for g, r in zip(got_list, refs)):
            bad = next(g for g, r in zip(got_list, refs) if g.size != np.asarray(r[name]).size)
            comp.outputs.append(
                OutputMetrics(
                    name,
                    list(np.asarray(refs[0][name]).shape),
                    math.inf,
                    math.inf,
                    math.inf,
                    0.0,
                    passed=False,
                    reason=f"shape {list(bad.shape)} != expected {list(np.asarray(refs[0][name]).shape)}",
                )
            )
            continue
        if len(refs) == 1:
            m = compare_arrays(name, refs[0][name], got_list[0].reshape(np.asarray(refs[0][name]).shape))
        else:
            got = np.concatenate([g.reshape(1, -1) for g in got_list], axis=0)
            m = compare_arrays(name, ref, got)
            m.shape = list(np.asarray(refs[0][name]).shape)
            # The (samples, size) stack looks 2-D to compare_arrays: top-k only for real scores.
            m.top1 = m.top5 = None
            ref0 = np.asarray(refs[0][name])
            if _looks_like_scores(ref0):
                r2 = np.concatenate([np.asarray(r[name]) for r in refs])
                g2 = np.concatenate([g.reshape(np.asarray(r[name]).shape) for g, r in zip(got_list, refs)])
                t = compare_arrays(name, r2, g2)
                m.top1, m.top5 = t.top1, t.top5
        comp.outputs.append(apply_tolerance(m, tol))
    return comp
