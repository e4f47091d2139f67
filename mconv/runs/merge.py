"""``mconv report merge``: the shards of a ``mconv run --shard I/N`` batch -> one output folder.

Each shard's ``summary.json`` records the whole batch (its recipes, their targets, the jobs
of the shard). Merging checks that shards 1..N are all there and cover every job exactly
once, then writes the reports a single run would have written: one ``report.json`` per
recipe (the shared steps, export to data, from the first shard that ran the recipe; then
each target's steps in the recipe's order) and the batch summary, with the same exit code.
The shards' recipe folders (artifacts) are copied in; a recipe's ``run.log`` keeps its
name when one shard ran the recipe, else becomes ``run.shard-I.log`` per shard.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mconv.errors import EXIT_CONVERSION, EXIT_OK, InputError, UsageError
from mconv.runs.report import build_summary, exit_code_of, failed_report_of, save_summary, write_report

_REPORT_FILES = ("report.json", "report.md", "run.log")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: missing; {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON report ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a JSON object; {what}")
    return data


def read_shards(dirs: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, summary) per shard, sorted by shard index; checks that they form one batch."""
    hint = "give the -o folders of `mconv run --shard I/N`, one per shard"
    shards = []
    for d in dirs:
        summary = _read_json(d / "summary.json", hint)
        rec = summary.get("shard")
        if not isinstance(rec, dict) or not {"index", "count", "recipes", "jobs"} <= set(rec):
            raise InputError(f"{d / 'summary.json'}: not the summary of a sharded run; {hint}")
        shards.append((d, summary))
    shards.sort(key=lambda s: s[1]["shard"]["index"])
    count = shards[0][1]["shard"]["count"]
    batch = shards[0][1]["shard"]["recipes"]
    for d, s in shards:
        if s["shard"]["count"] != count or s["shard"]["recipes"] != batch:
            raise InputError(f"{d}: a shard of another batch (not the recipes, targets or N of {shards[0][0]})")
    indexes = [s["shard"]["index"] for _, s in shards]
    missing = sorted(set(range(1, count + 1)) - set(indexes))
    doubled = sorted({i for i in indexes if indexes.count(i) > 1})
    if missing or doubled:
        problem = f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing" if missing else ""
        if doubled:
            problem += ("; " if problem else "") + f"shard(s) {', '.join(f'{i}/{count}' for i in doubled)} given twice"
        raise UsageError(f"report merge: {problem}; give each of the {count} shards' folders once")
    _check_jobs(shards, batch)
    return shards


def _check_jobs(shards: list[tuple[Path, dict[str, Any]]], batch: list[dict[str, Any]]) -> None:
    expected = sorted([r["name"], t] for r in batch for t in r["targets"])
    got = sorted(j for _, s in shards for j in s["shard"]["jobs"])
    if got != expected:
        raise InputError(
            f"report merge: the shards' jobs do not cover the batch once each ({len(got)} for {len(expected)} jobs)"
        )


def merge_reports(partials: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """One recipe's report from its shards' reports (in shard order)."""
    first = partials[0]
    steps = [s for s in first.get("steps", []) if "label" not in s]
    for label in labels:
        for p in partials:
            steps += [s for s in p.get("steps", []) if s.get("label") == label]
    errors = [p["error"] for p in partials if p.get("error")]
    codes = [s.get("exit_code", EXIT_OK) for s in steps if s["status"] == "failed"]
    code = exit_code_of(codes + ([EXIT_CONVERSION] if errors else []))
    report = {
        "recipe": first["recipe"],
        "name": first["name"],
        "description": first.get("description"),
        "status": "passed" if code == EXIT_OK else "failed",
        "exit_code": code,
        "seconds": max(p.get("seconds", 0.0) for p in partials),
        "overrides": first.get("overrides", []),
        "steps": steps,
        "versions": next((p["versions"] for p in partials if p.get("versions")), {}),
    }
    if errors:
        report["error"] = errors[0]
    return report


def merge_runs(dirs: list[Path], out: Path) -> dict[str, Any]:
    """Merge the shard folders ``dirs`` into ``out``; returns the merged summary."""
    out = out.resolve()
    for d in dirs:
        if out == d.resolve() or out.is_relative_to(d.resolve()):
            raise UsageError(f"-o {out}: the merged folder must not be a shard's folder ({d}) or inside one")
    shards = read_shards(dirs)
    batch = shards[0][1]["shard"]["recipes"]
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for r in batch:
        ran = [(d, s["shard"]["index"]) for d, s in shards if any(j[0] == r["name"] for j in s["shard"]["jobs"])]
        partials = [_partial(d / r["name"], r) for d, _ in ran]
        rdir = out / r["name"]
        if rdir.exists():
            shutil.rmtree(rdir)
        for d, index in ran:
            _copy_recipe_dir(d / r["name"], rdir, None if len(ran) == 1 else index)
        reports[r["name"]] = merge_reports(partials, r["targets"])
        rdir.mkdir(parents=True, exist_ok=True)
        write_report(reports[r["name"]], rdir)
    seconds = max(s.get("seconds", 0.0) for _, s in shards)
    summary = build_summary([(r["name"], r["recipe"]) for r in batch], reports, out, seconds)
    save_summary(summary, out)
    return summary


def _partial(rdir: Path, r: dict[str, Any]) -> dict[str, Any]:
    path = rdir / "report.json"
    if not path.is_file():  # the shard died before the recipe reported
        return failed_report_of(r["name"], r["recipe"], f"no report from its shard: {path} is missing")
    return _read_json(path, "a shard's recipe folder without its report")


def _copy_recipe_dir(src: Path, dest: Path, index: int | None) -> None:
    if not src.is_dir():
        return

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in _REPORT_FILES and Path(folder) == src]

    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=ignore)
    log = src / "run.log"
    if log.is_file():
        shutil.copy2(log, dest / ("run.log" if index is None else f"run.shard-{index}.log"))
