"""Numerical comparison of outputs: one implementation of metrics and tolerances,
shared by export, build and ``mconv verify``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mconv.noise import RoundingFloor


# FP32: an artifact's relative error may reach this many times the model's rounding
# floor (mconv.noise) when that is above the fixed rtol. Measured with
# bench/verify_floor.py on 65 zoo models: the 133 correct ncnn/OpenVINO artifacts stay
# within 4.3x their floor; broken weights whose error is above 1e-4 are >= 170x it (one
# weight wrong) and >= 785x (a block scaled by 3). 20 sits ~5x from the first, ~8x from
# the second.
FLOOR_FACTOR = 20.0
# However sensitive a model, FP32 never passes a relative error above this.
MAX_FLOOR_RTOL = 1e-2


@dataclass(frozen=True)
class Tolerance:
    """An output passes if every set bound holds.

    ``rtol``: max |got - ref| <= bound * max |ref| + atol, where bound is ``rtol``,
    or with ``floor_k`` set, max(rtol, min(floor_k * floor, MAX_FLOOR_RTOL)) with
    ``floor`` the output's measured rounding floor (see :mod:`mconv.noise`).
    ``min_cos``: cosine >= min_cos.
    """

    rtol: float | None = None
    atol: float = 0.0
    min_cos: float | None = None
    floor_k: float | None = None

    def bound(self, floor: float | None) -> float | None:
        """The relative bound for an output with rounding floor ``floor`` (None: unknown)."""
        if self.rtol is None:
            return None
        if self.floor_k and floor is not None and math.isfinite(floor):
            return max(self.rtol, min(self.floor_k * floor, MAX_FLOOR_RTOL))
        return self.rtol

    def describe(self) -> str:
        parts = []
        if self.rtol is not None:
            rel = f"rel<={self.rtol:g}"
            if self.floor_k:
                rel = f"rel<=max({self.rtol:g}, {self.floor_k:g}x floor)"
            parts.append(rel + (f" atol={self.atol:g}" if self.atol else ""))
        if self.min_cos is not None:
            parts.append(f"cos>={self.min_cos:g}")
        return ", ".join(parts) or "none"


DEFAULT_TOLERANCES = {
    "fp32": Tolerance(rtol=1e-4, floor_k=FLOOR_FACTOR),
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
    # How it was compared: "elementwise", or "matched rows (TopK 'node')" for outputs behind a selection.
    rule: str = "elementwise"
    floor: float | None = None  # the rounding floor (relative), where measured
    ratio: float | None = None  # rel / floor
    bound: float | None = None  # the relative bound applied

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


def apply_tolerance(m: OutputMetrics, tol: Tolerance, floor: float | None = None) -> OutputMetrics:
    """Set ``m.passed``/``m.reason`` by ``tol``; ``floor``: the output's rounding floor, if measured."""
    if m.reason:
        m.passed = False
        return m
    fails = []
    if floor is not None:
        m.floor = floor
        m.ratio = m.rel / floor if floor > 0 else (0.0 if m.rel == 0 else math.inf)
    bound = tol.bound(floor)
    if bound is not None:
        m.bound = bound
        if m.max_abs > bound * m.ref_max + tol.atol:
            why = f"rel {m.rel:.3g} > {bound:.3g}"
            if tol.floor_k and floor is not None:
                why += f" (rounding floor {floor:.3g}: {m.ratio:.3g}x it)"
            fails.append(why)
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
        rule = f" ({w.rule})" if w.rule != "elementwise" else ""
        return f"worst output '{w.name}'{rule}: max abs {w.max_abs:.3g}, rel {w.rel:.3g}, cos {w.cosine:.6f}" + (
            f" ({w.reason})" if w.reason else ""
        )

    def advice(self) -> str:
        """What the user can do about the worst failing output (empty when all pass)."""
        w = self.worst()
        if w is None or w.passed:
            return ""
        if w.reason.startswith("rel") and w.floor is not None:
            return (
                f"float noise alone moves this output by {w.floor:.3g} (the rounding floor), the artifact by "
                f"{w.ratio:.3g}x that: find the first diverging layer with `mconv verify --locate`, or "
                f"accept it with --rtol {w.rel * 1.5:.2g}"
            )
        if w.reason.startswith("rel"):
            return (
                "find the first diverging layer with `mconv verify --locate`, or accept it with "
                f"--rtol {w.rel * 1.5:.2g}"
            )
        if w.reason.startswith("cos"):
            return (
                "find the first diverging layer with `mconv verify --locate` (INT8: keep it in float with "
                f"--ignore, or give more --calib samples), or accept it with --min-cos {max(w.cosine - 1e-4, -1):.4f}"
            )
        return ""


def _missing(name: str, shape: list[int], reason: str) -> OutputMetrics:
    return OutputMetrics(name, shape, math.inf, math.inf, math.inf, 0.0, passed=False, reason=reason)


def output_metrics(name: str, refs: list[dict[str, np.ndarray]], gots: list[dict[str, np.ndarray]]) -> OutputMetrics:
    """Metrics of one output over all samples (concatenated), before any tolerance."""
    if any(name not in g for g in gots):
        return _missing(name, [], "output missing from the artifact")
    got_list = [np.asarray(g[name]) for g in gots]
    ref0 = np.asarray(refs[0][name])
    if any(g.size != np.asarray(r[name]).size for g, r in zip(got_list, refs)):
        bad = next(g for g, r in zip(got_list, refs) if g.size != np.asarray(r[name]).size)
        return _missing(name, list(ref0.shape), f"shape {list(bad.shape)} != expected {list(ref0.shape)}")
    if len(refs) == 1:
        return compare_arrays(name, refs[0][name], got_list[0].reshape(ref0.shape))
    ref = np.concatenate([np.asarray(r[name]).reshape(1, -1) for r in refs], axis=0)
    got = np.concatenate([g.reshape(1, -1) for g in got_list], axis=0)
    m = compare_arrays(name, ref, got)
    m.shape = list(ref0.shape)
    # The (samples, size) stack looks 2-D to compare_arrays: top-k only for real scores.
    m.top1 = m.top5 = None
    if _looks_like_scores(ref0):
        r2 = np.concatenate([np.asarray(r[name]) for r in refs])
        g2 = np.concatenate([g.reshape(np.asarray(r[name]).shape) for g, r in zip(got_list, refs)])
        t = compare_arrays(name, r2, g2)
        m.top1, m.top5 = t.top1, t.top5
    return m


def align_selected(
    refs: list[dict[str, np.ndarray]],
    gots: list[dict[str, np.ndarray]],
    selection: dict[str, str],
) -> tuple[list[dict[str, np.ndarray]], dict[str, str]]:
    """``gots`` with the rows of outputs behind a selection matched to the reference's rows.

    Outputs behind the same selecting node are matched jointly (one permutation per
    sample); where their rows differ in number, each alone. Returns the aligned
    outputs and, per matched output, the rule's name.
    """
    from mconv.selection import match_rows

    groups: dict[str, list[str]] = {}
    for name, sel in selection.items():
        if all(name in g for g in gots) and all(name in r for r in refs):
            groups.setdefault(sel, []).append(name)
    if not groups:
        return gots, {}
    out = [dict(g) for g in gots]
    rules: dict[str, str] = {}
    for sel, names in groups.items():
        sets = [names] if len(names) > 1 else []
        sets += [[n] for n in names]
        done: set[str] = set()
        for subset in sets:
            subset = [n for n in subset if n not in done]
            if not subset:
                continue
            moved = [match_rows([r[n] for n in subset], [g[n] for n in subset]) for r, g in zip(refs, out)]
            if any(m is None for m in moved):
                continue
            for g, m in zip(out, moved):
                g.update(zip(subset, m))
            done.update(subset)
            rules.update({n: f"matched rows ({sel})" for n in subset})
    return out, rules


def compare_outputs(
    refs: list[dict[str, np.ndarray]],
    gots: list[dict[str, np.ndarray]],
    tol: Tolerance,
    names: list[str] | None = None,
    *,
    selection: dict[str, str] | None = None,
    floor: RoundingFloor | None = None,
) -> Comparison:
    """Compare per output over all samples; metrics are over the samples concatenated.

    ``selection`` (output -> selecting node, from :func:`mconv.selection.selected_outputs`):
    those outputs are compared after matching rows. ``floor``: the model's rounding
    floor; a tolerance with ``floor_k`` measures it for every output that misses the
    fixed ``rtol`` (or for all, once measured) and widens the bound to it.
    """
    names = names or list(refs[0].keys())
    gots, rules = align_selected(refs, gots, selection or {})
    comp = Comparison()
    for name in names:
        m = output_metrics(name, refs, gots)
        m.rule = rules.get(name, m.rule)
        fl = None
        wants_floor = floor is not None and tol.floor_k and tol.rtol is not None and not m.reason
        if wants_floor and (floor.measured or m.max_abs > tol.rtol * m.ref_max + tol.atol):
            fl = floor.value(name, refs, selection or {})
        comp.outputs.append(apply_tolerance(m, tol, fl))
    return comp
