"""The body of one recipe's child process: its output goes to ``<recipe>/run.log`` (file
descriptors 1 and 2 redirected, so native libraries' output too), its step events and
its report to the parent over a queue."""

from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mconv.recipe import LoadedRecipe
from mconv.runs.report import failed_report
from mconv.runs.steps import RecipeRun


def run_recipe_process(recipe: LoadedRecipe, out_root: str, q, threads: int | None) -> None:
    """Body of one recipe's process: logs to run.log, events and the result to ``q``."""
    from mconv.fsutil import commit, install_signal_cleanup, temp_path_for

    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    install_signal_cleanup()
    rdir = Path(out_root).resolve() / recipe.name
    if rdir.exists() and (rdir / "report.json").is_file():
        shutil.rmtree(rdir)  # a previous run's folder: its files must not pass for this run's
    rdir.mkdir(parents=True, exist_ok=True)
    log = temp_path_for(rdir / "run.log")
    _redirect_output(log)

    def emit(kind: str, payload: dict[str, Any]) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {kind} {payload.get('step')} {payload.get('status')}", flush=True)
        q.put((kind, recipe.name, payload))

    try:
        report = RecipeRun(recipe, Path(out_root), emit).run()
    except BaseException as e:  # the run itself broke (not a step): still report it
        traceback.print_exc()
        report = failed_report(recipe, f"internal error: {type(e).__name__}: {e}")
    sys.stdout.flush()
    sys.stderr.flush()
    commit(log, rdir / "run.log")
    q.put(("done", recipe.name, report))


def _redirect_output(log: Path) -> None:
    """Send file descriptors 1 and 2, and sys.stdout/stderr, to the existing file ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def run_isolated(recipe: LoadedRecipe, out_root: str, threads: int | None, forward) -> dict[str, Any]:
    """One recipe in a spawned child process (for an executor's task): its events go to
    ``forward``, its report is returned (a crash report when it died without one).

    When interrupted (a cancelled task), the child is terminated and the recipe's
    unfinished folder removed: no partial artifacts stay behind.
    """
    import multiprocessing as mp
    import queue as queue_mod

    from mconv.runs.report import crashed_report

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=run_recipe_process, args=(recipe, out_root, q, threads), name=f"mconv-run-{recipe.name}")
    p.start()
    try:
        while True:
            try:
                ev = q.get(timeout=0.2)
            except queue_mod.Empty:
                if p.is_alive():
                    continue
                try:
                    ev = q.get(timeout=0.5)
                except queue_mod.Empty:
                    p.join(5)
                    return crashed_report(recipe, p.exitcode, Path(out_root))
            if ev[0] == "done":
                p.join(30)
                return ev[2]
            forward(ev)
    except BaseException:
        stop_and_clean(p, Path(out_root) / recipe.name)
        raise


def stop_and_clean(p, rdir: Path) -> None:
    """Terminate the recipe process ``p`` and remove its folder unless it finished (report.json)."""
    if p.is_alive():
        p.terminate()  # SIGTERM: the child removes its temporaries
        p.join(10)
    if p.is_alive():
        p.kill()
        p.join(5)
    remove_unfinished(rdir)


def remove_unfinished(rdir: Path) -> None:
    """Remove a recipe folder whose run did not finish (no report.json)."""
    if rdir.is_dir() and not (rdir / "report.json").is_file():
        shutil.rmtree(rdir, ignore_errors=True)
