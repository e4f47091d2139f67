"""``mconv run --executor ray[:ADDRESS]``: each recipe (its shard's part) as one Ray task.

The task runs on any node of the cluster and starts the same spawned worker process as the
local executor (:func:`mconv.runs.worker.run_isolated`), so a runtime that crashes natively
fails its recipe only, never the Ray worker. The worker writes the artifacts and reports
into the output folder, which must be one shared filesystem path on every node; the task
returns the report. Each task declares ``num_cpus`` = the recipe's ``bench.threads``
(1 when unset; the worker's runtimes then get that many threads), so two benchmarks never
share cores. Step events reach the driver's display through a Ray queue.

Without an address a private local instance is started: bound to 127.0.0.1, no dashboard,
usage statistics off, its session files under ``$RAY_TMPDIR`` (default: a fresh
``mconv-ray-*`` temporary folder, removed afterwards), token authentication with a token
held in the environment (nothing written to ``~/.ray``), Ray's logs off mconv's stderr.
Ctrl-C or SIGTERM cancels the tasks (``ray.cancel``); each cancelled task terminates its
worker and removes the recipe's unfinished folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mconv.errors import UsageError
from mconv.recipe import LoadedRecipe
from mconv.runs.plan import plan
from mconv.runs.report import crashed_report

CANCEL_WAIT_S = 10.0


def task_cpus(recipe: LoadedRecipe) -> int:
    """The CPUs a recipe's task reserves: its benchmark threads (1 when unset)."""
    return recipe.spec.bench.threads or 1


def _job(recipe: LoadedRecipe, out_root: str, cpus: int, sink) -> dict[str, Any]:
    """The Ray task: one recipe in its own worker process; events to ``sink``."""
    from mconv.runs.worker import run_isolated

    if recipe.spec.bench.enabled and recipe.spec.bench.threads is None:
        recipe.spec.bench.threads = cpus  # the runtime's default would take every core of the node
    sink.put(("started", recipe.name, {}))
    return run_isolated(recipe, out_root, cpus, sink.put)


def _local_settings() -> tuple[dict[str, Any], str | None]:
    """ray.init arguments (and the environment, set before Ray is imported: it reads it
    then) for a private local instance; the temporary folder to remove afterwards."""
    own_tmp = None
    if not os.environ.get("RAY_TMPDIR"):
        own_tmp = tempfile.mkdtemp(prefix="mconv-ray-")
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        import secrets

        os.environ.setdefault("RAY_AUTH_MODE", "token")  # else Ray writes a token to ~/.ray
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return {"_temp_dir": os.environ.get("RAY_TMPDIR") or own_tmp, "_node_ip_address": "127.0.0.1"}, own_tmp


@contextlib.contextmanager
def ray_session(address: str | None):
    """``ray`` connected to ``address`` (None: a private local instance); shut down after,
    unless the caller had connected already."""
    import sys

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield sys.modules["ray"]
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    own_tmp = None
    if address is None:
        local, own_tmp = _local_settings()
        kwargs.update(local)
    try:
        try:
            import ray
        except ImportError:
            raise UsageError('--executor ray needs Ray: pip install "mconv[ray]"') from None
        from mconv.quiet import quiet

        try:
            with quiet():
                ray.init(address=address, **kwargs)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(f"--executor ray{':' + address if address else ''}: Ray did not start: {first}") from None
        try:
            yield ray
        finally:
            with quiet():
                ray.shutdown()
    finally:
        if own_tmp:
            shutil.rmtree(own_tmp, ignore_errors=True)


def run_recipes_ray(recipes: list[LoadedRecipe], out_dir: Path, address: str | None, display) -> dict[str, dict]:
    """Each recipe's report (name -> report), the recipes run as Ray tasks."""
    try:
        session = ray_session(address)
        ray = session.__enter__()
    except BaseException:
        display.close()
        raise
    try:
        from ray.util.queue import Queue

        sink = Queue(actor_options={"num_cpus": 0})
        task = ray.remote(_job)
        refs = {}
        for r in recipes:
            cpus = task_cpus(r)
            ref = task.options(num_cpus=cpus, max_retries=0, name=f"mconv-run-{r.name}").remote(
                r, str(out_dir), cpus, sink
            )
            refs[ref] = r
        return _collect(ray, refs, sink, out_dir, display)
    finally:
        session.__exit__(None, None, None)


def _collect(ray, refs: dict, sink, out_dir: Path, display) -> dict[str, dict]:
    """Wait for the tasks, feeding their events to ``display``; cancel them on interruption."""
    from mconv.fsutil import on_terminate, remove_on_terminate

    by_name = {r.name: r for r in refs.values()}
    started: set[str] = set()
    reports: dict[str, dict] = {}

    def handle(ev) -> None:
        kind, name, payload = ev
        if kind == "started":
            started.add(name)
            display.started(name, by_name[name].file, plan(by_name[name]))
        else:
            display.event(kind, name, payload)

    def cancel() -> None:
        _cancel(ray, list(refs), [by_name[n] for n in by_name if n not in reports], out_dir)

    on_terminate(cancel)
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.2)
            _drain(sink, handle)
            for ref in done:
                r = refs.pop(ref)
                _drain(sink, handle)
                if r.name not in started:
                    handle(("started", r.name, {}))
                reports[r.name] = _result(ray, ref, r, out_dir)
                display.finished(r.name, reports[r.name])
    except BaseException:
        cancel()
        raise
    finally:
        remove_on_terminate(cancel)
        display.close()
    return reports


def _drain(sink, handle) -> None:
    n = sink.size()
    if n:
        for ev in sink.get_nowait_batch(n):
            handle(ev)


def _result(ray, ref, recipe: LoadedRecipe, out_dir: Path) -> dict:
    """A finished task's report; a task whose Ray worker died gets a crash report."""
    try:
        return ray.get(ref)
    except Exception:
        return crashed_report(recipe, None, out_dir)


def _cancel(ray, refs: list, unfinished: list[LoadedRecipe], out_dir: Path) -> None:
    """Cancel the tasks, give them time to stop their workers, remove unfinished folders."""
    from mconv.runs.worker import remove_unfinished

    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    deadline = time.monotonic() + CANCEL_WAIT_S
    pending = list(refs)
    while pending and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    for r in unfinished:
        remove_unfinished(out_dir / r.name)
