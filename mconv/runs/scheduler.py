"""run_batch: each recipe in a spawned child process, ``jobs`` at a time; their events
drive the display; a child that dies without reporting gets a crash report."""

from __future__ import annotations

import os
import queue as queue_mod
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mconv.errors import UsageError
from mconv.recipe import LoadedRecipe
from mconv.runs.display import PlainDisplay, RichDisplay
from mconv.runs.plan import plan
from mconv.runs.report import crashed_report, write_summary
from mconv.runs.worker import run_recipe_process

Event = tuple[str, str, dict[str, Any]]  # (kind, recipe name, payload)


@dataclass
class RunOptions:
    out_dir: Path
    jobs: int = 1
    as_json: bool = False
    progress: bool | None = None  # None: rich bars when stdout is a terminal and not --json
    shard: tuple[int, int] | None = None  # (I, N), 1 <= I <= N: run only shard I's jobs
    executor: str = "local"  # "local" or "ray[:ADDRESS]"


def parse_executor(text: str) -> tuple[str, str | None]:
    """``local`` / ``ray`` / ``ray:ADDRESS`` -> (kind, address); else a usage error (exit 2)."""
    kind, _, address = (text or "").partition(":")
    if kind == "local" and not address:
        return "local", None
    if kind == "ray":
        return "ray", address or None
    raise UsageError(f"--executor {text}: expected local, ray or ray:ADDRESS (e.g. ray:10.0.0.5:6379)")


def run_batch(recipes: list[LoadedRecipe], opts: RunOptions) -> dict[str, Any]:
    """Run every recipe (or shard ``opts.shard``'s part of the batch) with the chosen
    executor; write and return the summary."""
    from mconv.runs.shard import select, shard_record

    kind, address = parse_executor(opts.executor)
    record = None
    if opts.shard is not None:
        record = shard_record(recipes, *opts.shard)
        recipes = select(recipes, *opts.shard)
    out_dir = opts.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    display = _display_for(opts)
    t0 = time.perf_counter()
    if kind == "ray":
        from mconv.runs.ray_executor import run_recipes_ray

        reports = run_recipes_ray(recipes, out_dir, address, display)
    else:
        reports = _run_recipes(recipes, out_dir, max(1, opts.jobs), display)
    return write_summary(recipes, reports, out_dir, t0, record)


def _display_for(opts: RunOptions) -> RichDisplay | PlainDisplay:
    """Rich bars when asked (by default on a terminal without --json), else plain lines (stderr with --json)."""
    rich_ok = opts.progress if opts.progress is not None else (sys.stdout.isatty() and not opts.as_json)
    return RichDisplay() if rich_ok else PlainDisplay(sys.stderr if opts.as_json else sys.stdout)


def _run_recipes(
    recipes: list[LoadedRecipe], out_dir: Path, jobs: int, display: RichDisplay | PlainDisplay
) -> dict[str, dict[str, Any]]:
    """Each recipe's report (name -> report), running ``jobs`` spawned children at a time.

    A child that dies without reporting gets a crash report; on any exception (Ctrl-C
    included) the running children are terminated. The display is closed either way.
    """
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    pending = deque(recipes)
    running: dict[str, Any] = {}
    reports: dict[str, dict[str, Any]] = {}
    by_name = {r.name: r for r in recipes}

    def handle(ev: Event) -> None:
        kind, name, payload = ev
        if kind == "done":
            reports[name] = payload
            display.finished(name, payload)
        else:
            display.event(kind, name, payload)

    try:
        while pending or running:
            while pending and len(running) < jobs:
                r = pending.popleft()
                p = ctx.Process(
                    target=run_recipe_process, args=(r, str(out_dir), q, threads), name=f"mconv-run-{r.name}"
                )
                p.start()
                running[r.name] = p
                display.started(r.name, r.file, plan(r))
            try:
                handle(q.get(timeout=0.2))
            except queue_mod.Empty:
                pass
            for name, p in list(running.items()):
                if name in reports:
                    p.join(30)
                    del running[name]
                elif not p.is_alive():
                    _drain(q, handle)
                    if name not in reports:
                        reports[name] = crashed_report(by_name[name], p.exitcode, out_dir)
                        display.finished(name, reports[name])
                    del running[name]
    except BaseException:
        for p in running.values():
            p.terminate()
        raise
    finally:
        display.close()
    return reports


def _drain(q, handle) -> None:
    while True:
        try:
            handle(q.get(timeout=0.5))
        except queue_mod.Empty:
            return
