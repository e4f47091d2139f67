"""Reports: exit codes, library versions, each recipe's report.md, the batch summary
(summary.json, summary.md) and the reports of recipes that failed outside their steps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mconv.errors import EXIT_CONVERSION, EXIT_OK, exit_code_of
from mconv.recipe import LoadedRecipe

# Distributions every report records the version of; targets add their runtimes' (Target.runtime_packages).
CORE_PACKAGES = ("onnx", "onnxruntime", "onnxsim", "onnxslim", "numpy", "torch")


def json_safe(o: Any) -> Any:
    import math

    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return o


def versioned_packages() -> list[str]:
    """The core packages, then each registered target's runtime packages, in registry order, once each."""
    from mconv.targets import all_targets

    names = list(CORE_PACKAGES)
    for entry in all_targets():
        if entry.error:
            continue
        try:
            packages = entry.load().runtime_packages
        except Exception:  # a broken plugin is listed by `mconv targets`, not here
            continue
        for name in packages:
            if name not in names:
                names.append(name)
    return names


def versions() -> dict[str, str | None]:
    """mconv, Python and each backend library's installed version (None when absent)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import mconv

    out: dict[str, str | None] = {"mconv": mconv.__version__, "python": platform.python_version()}
    for name in versioned_packages():
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v: Any, spec: str) -> str:
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return "" if v is None else str(v)


def render_report_md(r: dict[str, Any]) -> str:
    out = [f"# {r['name']}: {r['status'].upper()} (exit {r['exit_code']})\n"]
    out.append(f"Recipe `{r['recipe']}`, {r['seconds']:.1f} s.")
    if r.get("overrides"):
        out.append(" Overrides: " + ", ".join(f"`--set {o}`" for o in r["overrides"]) + ".")
    out.append("\n\n## Steps\n\n")
    out.append(
        _md_table(
            ["step", "status", "seconds", "details"],
            [
                [s["step"], s["status"], f"{s['seconds']:.2f}", s.get("error") or s.get("reason") or ""]
                for s in r["steps"]
            ],
        )
    )
    vrows = []
    for s in r["steps"]:
        v = s.get("verification")
        for o in (v or {}).get("outputs", []):
            vrows.append(
                [
                    s["step"],
                    o["name"],
                    v.get("tolerance"),
                    _fmt(o["max_abs"], ".3g"),
                    _fmt(o["rel"], ".3g"),
                    _fmt(o["cosine"], ".6f"),
                    "" if o.get("top1") is None else _fmt(o["top1"], ".2f"),
                    "yes" if o["passed"] else f"NO: {o.get('reason', '')}",
                ]
            )
    if vrows:
        out.append("\n## Verification\n\n")
        out.append(_md_table(["step", "output", "tolerance", "max abs", "rel", "cosine", "top-1", "ok"], vrows))
    arows = [[s["step"], a["path"], a.get("bytes", a.get("files"))] for s in r["steps"] for a in s.get("artifacts", [])]
    if arows:
        out.append("\n## Artifacts\n\n")
        out.append(_md_table(["step", "path", "bytes (files)"], arows))
    brows = []
    for s in r["steps"]:
        b = s.get("bench")
        if b and b.get("latency_ms"):
            lat = b["latency_ms"]
            brows.append(
                [
                    s["step"],
                    _fmt(lat.get("median"), ".3f"),
                    _fmt(lat.get("p90"), ".3f"),
                    _fmt(b.get("throughput"), ".1f"),
                    _fmt(b.get("load_ms"), ".1f"),
                    _fmt(b.get("peak_rss_mb"), ".0f"),
                    b.get("iterations"),
                ]
            )
    if brows:
        out.append("\n## Bench\n\n")
        out.append(_md_table(["step", "median ms", "p90 ms", "per s", "load ms", "peak RSS MB", "iters"], brows))
    out.append("\n## Versions\n\n")
    out.append(_md_table(["library", "version"], [[k, v or "not installed"] for k, v in r["versions"].items()]))
    return "".join(out)


def render_summary_md(s: dict[str, Any]) -> str:
    out = [f"# mconv run: {'PASSED' if s['ok'] else 'FAILED'} (exit {s['exit_code']})\n\n"]
    out.append(f"{len(s['recipes'])} recipe(s) in {s['seconds']:.1f} s.\n\n")
    rows = [
        [
            r["name"],
            r["recipe"],
            r["status"],
            r["exit_code"],
            _fmt(r["seconds"], ".1f"),
            "; ".join(r["failures"] + [f"skipped {x}" for x in r["skipped"]]),
            f"[report]({r['report_md']})" if r.get("report_md") else "",
        ]
        for r in s["recipes"]
    ]
    out.append(_md_table(["recipe", "file", "status", "exit", "seconds", "notes", "report"], rows))
    return "".join(out)


def summary_row(name: str, file: str, report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    steps = report.get("steps", [])
    failures = [f"{s['step']}: {s.get('error', '')}" for s in steps if s["status"] == "failed"]
    if report.get("error"):
        failures.append(report["error"])
    rdir = out_dir / name
    return {
        "name": name,
        "recipe": file,
        "status": report["status"],
        "exit_code": report["exit_code"],
        "seconds": report.get("seconds", 0.0),
        "steps": {k: sum(1 for s in steps if s["status"] == k) for k in ("ok", "failed", "skipped")},
        "failures": failures,
        "skipped": [f"{s['step']}: {s.get('reason', '')}" for s in steps if s["status"] == "skipped"],
        "report": str(rdir / "report.json") if (rdir / "report.json").is_file() else None,
        "report_md": f"{name}/report.md" if (rdir / "report.md").is_file() else None,
    }


def build_summary(
    entries: list[tuple[str, str]], reports: dict[str, dict[str, Any]], out_dir: Path, seconds: float
) -> dict[str, Any]:
    """The batch summary of ``entries`` ((name, recipe file), in order) and their reports."""
    rows = [summary_row(name, file, reports[name], out_dir) for name, file in entries]
    code = exit_code_of(row["exit_code"] for row in rows if row["exit_code"] != EXIT_OK)
    return {
        "command": "run",
        "ok": code == EXIT_OK,
        "exit_code": code,
        "out_dir": str(out_dir),
        "seconds": round(seconds, 3),
        "recipes": rows,
        "artifacts": [str(out_dir / "summary.json"), str(out_dir / "summary.md")],
    }


def save_summary(summary: dict[str, Any], out_dir: Path) -> None:
    """summary.json and summary.md into ``out_dir``."""
    import json

    from mconv.fsutil import write_text_atomic

    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out_dir / "summary.md", render_summary_md(summary))


def write_summary(
    recipes: list[LoadedRecipe],
    reports: dict[str, dict[str, Any]],
    out_dir: Path,
    t0: float,
    shard: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The batch summary (recipes in the given order), written as summary.json and summary.md;
    a shard's summary also records the whole batch (``shard``) for ``mconv report merge``."""
    summary = build_summary([(r.name, r.file) for r in recipes], reports, out_dir, time.perf_counter() - t0)
    if shard is not None:
        summary["shard"] = shard
    save_summary(summary, out_dir)
    return summary


def write_report(report: dict[str, Any], rdir: Path) -> None:
    """A recipe's report.json and report.md into its folder."""
    import json

    from mconv.fsutil import write_text_atomic

    write_text_atomic(rdir / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(rdir / "report.md", render_report_md(report))


def failed_report(recipe: LoadedRecipe, error: str) -> dict[str, Any]:
    """The report of a recipe that failed outside its steps."""
    return failed_report_of(recipe.name, recipe.file, error)


def failed_report_of(name: str, file: str, error: str) -> dict[str, Any]:
    """The report of recipe ``name`` (from ``file``) that failed outside its steps."""
    return {
        "recipe": file,
        "name": name,
        "status": "failed",
        "exit_code": EXIT_CONVERSION,
        "seconds": 0.0,
        "steps": [],
        "error": error,
    }


def crashed_report(recipe: LoadedRecipe, exitcode: int | None, out_dir: Path) -> dict[str, Any]:
    """The report of a recipe whose process died without reporting (a native crash)."""
    import json

    from mconv.fsutil import write_text_atomic

    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit status {exitcode}"
    report = {
        **failed_report(recipe, f"the recipe's process died ({how}); see {out_dir / recipe.name}"),
        "versions": versions(),
    }
    rdir = out_dir / recipe.name
    rdir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(rdir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def failure_message(summary: dict[str, Any]) -> str:
    """One line for a failed batch: which recipes and their first failure."""
    bad = [r for r in summary["recipes"] if r["exit_code"] != EXIT_OK]
    parts = []
    for r in bad[:5]:
        first = (r["failures"] or ["failed"])[0]
        parts.append(f"{r['name']} ({first[:200]})")
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (
        f"{len(bad)} of {len(summary['recipes'])} recipe(s) failed: "
        + "; ".join(parts)
        + more
        + f"; see {Path(summary['out_dir']) / 'summary.md'}"
    )
