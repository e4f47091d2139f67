"""``mconv bench``: latency, throughput, load time, memory and size of artifacts, side by side.

Each artifact gets one long-lived child process (spawned, so runtimes do not share
state or threads with mconv or each other) that loads its runner and then answers
requests over a pipe. The parent drives the children in turn, one inference at a
time and rotating which goes first each round, so that all artifacts are measured
in the same minutes: a noisy machine slows them all alike and their ratios hold.
Latency is timed inside the child around ``Runner.infer``; the peak resident memory
is the child's own ``ru_maxrss``. A child that crashes or hangs fails its row only.
Children run with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment says otherwise:
an idle runtime's spinning OpenMP threads would otherwise slow the one being measured.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mconv.errors import InputError, MconvError, MissingDependencyError, UsageError
from mconv.targets.base import Artifact

DEFAULT_WARMUP = 10
DEFAULT_ITERS = 100


@dataclass
class BenchRequest:
    artifacts: list[Path]
    threads: int | None = None
    warmup: int = DEFAULT_WARMUP
    iters: int | None = None  # default DEFAULT_ITERS unless seconds is given
    seconds: float | None = None
    batch: int | None = None
    timeout: float | None = 600.0  # per request to a child (load, one inference)
    plot: Path | None = None


# ---------------------------------------------------------------------------
# The child process


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def _worker(conn, target: str, target_ref: str | None, artifact: dict, feeds: dict, threads: int | None) -> None:
    """Serve ("load",), ("run", n), ("rss",) and ("stop",) until told to stop."""
    import os

    # Between two of its inferences a runner waits for the others; OpenMP threads that
    # spin while waiting (ncnn's, by default) would steal the cores the others measure on.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    conn.send(("ready", None))  # interpreter up, mconv imported: from here on it is the runner's time
    runner = None
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            return
        try:
            if cmd[0] == "stop":
                return
            if cmd[0] == "load":
                from mconv.runner import ensure_target

                t0 = time.perf_counter()
                runner = ensure_target(target, target_ref).runner(Artifact.from_json(artifact), threads=threads)
                runner.infer(feeds)  # lazy loads and one-time setup belong to load time
                conn.send(("ok", time.perf_counter() - t0))
            elif cmd[0] == "run":
                lat = []
                for _ in range(int(cmd[1])):
                    t0 = time.perf_counter()
                    runner.infer(feeds)
                    lat.append(time.perf_counter() - t0)
                conn.send(("ok", lat))
            elif cmd[0] == "rss":
                conn.send(("ok", _peak_rss_bytes()))
        except MconvError as e:
            conn.send(("mconv", (e.message, e.exit_code)))
        except BaseException as e:  # report, never leave the parent waiting
            conn.send(("error", (f"{type(e).__name__}: {e}", 1)))


class _Child:
    """One artifact's runner process and the parent's end of its pipe."""

    def __init__(self, artifact: Artifact, feeds: dict, threads: int | None, timeout: float | None) -> None:
        from mconv.runner import target_ref

        self.what = f"{artifact.target} runner on {artifact.main.name}"
        self.timeout = timeout
        ctx = mp.get_context("spawn")
        self.conn, child_end = ctx.Pipe()
        args = (child_end, artifact.target, target_ref(artifact.target), artifact.to_json(), feeds, threads)
        self.proc = ctx.Process(target=_worker, args=args, daemon=True)
        self.proc.start()
        child_end.close()

    def wait_ready(self) -> None:
        """Wait for the child to start (spawning Python and importing mconv), which is not
        the runner's time: on a loaded machine it alone can outlast a short --timeout."""
        from mconv.isolate import STARTUP_SECONDS, IsolatedFailure, _signal_failure

        if not self.conn.poll(STARTUP_SECONDS):
            self.kill()
            raise IsolatedFailure(f"{self.what} did not start within {STARTUP_SECONDS:g} s", kind="timeout")
        try:
            self.conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            self.proc.join(10)
            raise _signal_failure(self.what, self.proc.exitcode) from None

    def request(self, *cmd: Any) -> Any:
        from mconv.isolate import IsolatedFailure, _signal_failure

        try:
            self.conn.send(cmd)
            ready = self.conn.poll(self.timeout)
        except (BrokenPipeError, ConnectionResetError, EOFError):
            ready = True
        if not ready:
            self.kill()
            raise IsolatedFailure(f"{self.what} timed out after {self.timeout:g} s", kind="timeout")
        try:
            status, payload = self.conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            self.proc.join(10)
            raise _signal_failure(self.what, self.proc.exitcode) from None
        if status == "ok":
            return payload
        msg, code = payload
        raise IsolatedFailure(msg if status == "mconv" else f"{self.what} failed: {msg}", kind="error", exit_code=code)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(5)
        self.kill()
        self.conn.close()


# ---------------------------------------------------------------------------
# The parent


def _feeds_for(artifact: Artifact, batch: int | None) -> dict[str, np.ndarray]:
    from mconv.data import random_feeds
    from mconv.targets import get_target

    specs = get_target(artifact.target).artifact_inputs(artifact)
    if specs is None:
        raise InputError(f"{artifact.main}: cannot tell the input shapes of this {artifact.target} artifact")
    shapes = {}
    for s in specs:
        if s.shape is None:
            raise InputError(f"{artifact.main}: input '{s.name}' has an unknown rank; bench needs static shapes")
        dims = list(s.shape)
        if dims and (batch is not None or not isinstance(dims[0], int)):
            dims[0] = batch or 1
        if any(not isinstance(d, int) for d in dims):
            raise InputError(
                f"{artifact.main}: input '{s.name}' has dynamic dimensions {list(s.shape)}; "
                "rebuild it with --input NAME:SHAPE to bench it"
            )
        shapes[s.name] = tuple(dims)
    return random_feeds(specs, seed=0, count=1, shapes=shapes)[0]


def _row(artifact: Artifact) -> dict[str, Any]:
    return {
        "path": str(artifact.main),
        "target": artifact.target,
        "precision": artifact.precision,
        "status": "ok",
        "error": None,
        "exit_code": 0,
        "size_bytes": sum(f.stat().st_size for f in artifact.files if f.is_file()),
        "load_ms": None,
        "iterations": 0,
        "latency_ms": None,
        "throughput": None,
        "peak_rss_mb": None,
    }


def _fail(row: dict[str, Any], e: MconvError) -> None:
    kind = getattr(e, "kind", "error")
    row.update(
        status={"signal": "crashed", "timeout": "timeout"}.get(kind, "error"), error=e.message, exit_code=e.exit_code
    )


def _stats(lat_s: list[float], batch: int) -> dict[str, Any]:
    ms = np.asarray(lat_s) * 1e3
    return {
        "latency_ms": {
            "median": float(np.median(ms)),
            "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)),
            "min": float(ms.min()),
            "mean": float(ms.mean()),
        },
        "throughput": float(batch * len(ms) / (ms.sum() / 1e3)) if ms.sum() > 0 else None,
    }


def bench(req: BenchRequest) -> dict[str, Any]:
    """Benchmark every artifact in ``req``, interleaved; returns the JSON-ready report."""
    from mconv.verification import recognise_artifact

    _check_request(req)
    artifacts = [recognise_artifact(p) for p in req.artifacts]
    rows = [_row(a) for a in artifacts]
    children: dict[int, _Child] = {}
    lat: dict[int, list[float]] = {}
    try:
        _start_children(req, artifacts, rows, children)
        _load_children(children, rows, lat)
        _measure(req, children, rows, lat)
        _record_peak_rss(children, rows)
    finally:
        for child in children.values():
            child.close()
    batch = req.batch or 1
    _add_latency_stats(rows, lat, batch)
    report: dict[str, Any] = {
        "command": "bench",
        "threads": req.threads,
        "warmup": req.warmup,
        "iters": req.iters,
        "seconds": req.seconds,
        "batch": batch,
        "results": rows,
        "artifacts": [],
    }
    if req.plot is not None and any(r["latency_ms"] for r in rows):
        plot(report, req.plot)
        report["artifacts"] = [str(req.plot)]
    return report


def _start_children(
    req: BenchRequest, artifacts: list[Artifact], rows: list[dict], children: dict[int, _Child]
) -> None:
    """Start a child for each artifact whose runtime is present and whose inputs can be made.

    Fills ``children`` as it goes (rather than returning it) so that the caller closes the
    children already started when a later one fails. Other artifacts' rows get the reason.
    """
    from mconv.targets import get_target

    for i, art in enumerate(artifacts):
        try:
            target = get_target(art.target)
            missing = target.missing_runtime_message()
            if missing:
                rows[i].update(status="no-runtime", error=missing, exit_code=1)
                continue
            feeds = _feeds_for(art, req.batch)
        except MconvError as e:
            _fail(rows[i], e)
            continue
        children[i] = _Child(art, feeds, req.threads, req.timeout)


def _load_children(children: dict[int, _Child], rows: list[dict], lat: dict[int, list[float]]) -> None:
    """Load each child's model in turn, recording its load time; a child that fails is dropped."""
    # Processes start together; models load one at a time so load times do not contend.
    for i, child in list(children.items()):
        try:
            child.wait_ready()
            rows[i]["load_ms"] = child.request("load") * 1e3
            lat[i] = []
        except MconvError as e:
            _fail(rows[i], e)
            children.pop(i).kill()


def _record_peak_rss(children: dict[int, _Child], rows: list[dict]) -> None:
    """Each live child's peak resident memory, asked for after measuring."""
    for i, child in children.items():
        try:
            rows[i]["peak_rss_mb"] = child.request("rss") / 2**20
        except MconvError as e:
            _fail(rows[i], e)


def _add_latency_stats(rows: list[dict], lat: dict[int, list[float]], batch: int) -> None:
    """Latency statistics and throughput of each measured row, and its median relative to the first."""
    for i, row in enumerate(rows):
        if row["status"] == "ok" and lat.get(i):
            row["iterations"] = len(lat[i])
            row.update(_stats(lat[i], batch))
    base = next((r["latency_ms"]["median"] for r in rows if r["latency_ms"]), None)
    for r in rows:
        r["vs_first"] = r["latency_ms"]["median"] / base if (r["latency_ms"] and base) else None


def _check_request(req: BenchRequest) -> None:
    if not req.artifacts:
        raise UsageError("give at least one ARTIFACT to bench")
    if req.iters is not None and req.seconds is not None:
        raise UsageError("--iters and --seconds are exclusive; give one")
    if req.iters is not None and req.iters < 1:
        raise UsageError("--iters must be >= 1")
    if req.seconds is not None and req.seconds <= 0:
        raise UsageError("--seconds must be > 0")
    if req.warmup < 0:
        raise UsageError("--warmup must be >= 0")
    if req.batch is not None and req.batch < 1:
        raise UsageError("--batch must be >= 1")
    if req.threads is not None and req.threads < 1:
        raise UsageError("--threads must be >= 1")
    if req.plot is not None:
        if req.plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {req.plot}: give a .png file name")
        _import_pyplot()  # fail before minutes of measuring, not after


def _measure(req: BenchRequest, children: dict[int, _Child], rows: list[dict], lat: dict[int, list[float]]) -> None:
    """Warm-up rounds, then measured rounds; each round runs every live child once, in rotated order."""
    iters = req.iters if req.iters is not None else (None if req.seconds is not None else DEFAULT_ITERS)
    budget = None if req.seconds is None else req.seconds * max(len(children), 1)

    def one_round(r: int, record: bool) -> None:
        live = sorted(children)
        k = r % len(live)
        for i in live[k:] + live[:k]:
            try:
                got = children[i].request("run", 1)
            except MconvError as e:
                _fail(rows[i], e)
                children.pop(i).kill()
                continue
            if record:
                lat[i] += got

    for r in range(req.warmup):
        if not children:
            return
        one_round(r, False)
    start = time.perf_counter()
    r = 0
    while children:
        if iters is not None and r >= iters:
            break
        if budget is not None and r > 0 and time.perf_counter() - start >= budget:
            break
        one_round(r, True)
        r += 1


def raise_for_bench(report: dict[str, Any]) -> None:
    """Exit status of a finished bench: 2 if an artifact does not take the inputs, else 1 on any failure."""
    bad = [r for r in report["results"] if r["status"] != "ok"]
    if not bad:
        return
    code = 2 if any(r["exit_code"] == 2 for r in bad) else 1
    first = next(r for r in bad if code != 2 or r["exit_code"] == 2)
    more = f" (and {len(bad) - 1} more artifact(s) failed)" if len(bad) > 1 else ""
    raise MconvError(
        f"{first['path']} ({first['target']}): {first['status']}: {first['error']}{more}",
        exit_code=code,
        report=report,  # --json prints it inside the error object
    )


# ---------------------------------------------------------------------------
# The chart


def _import_pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependencyError("matplotlib (needed by --plot)", "plot", str(e)) from e
    return plt


def plot(report: dict[str, Any], dest: Path) -> None:
    """A bar chart of median latency per artifact, whiskers up to p90, written atomically."""
    from mconv.fsutil import atomic_path

    plt = _import_pyplot()
    rows = [r for r in report["results"] if r["latency_ms"]]
    med = np.array([r["latency_ms"]["median"] for r in rows])
    p90 = np.array([r["latency_ms"]["p90"] for r in rows])
    labels = [f"{Path(r['path']).name}\n{r['target']} {r['precision']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(rows)), 3.6))
    x = np.arange(len(rows))
    ax.bar(x, med, yerr=[np.zeros_like(med), p90 - med], capsize=6, color="#4c78a8")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("latency (ms), median; whisker: p90")
    threads = report["threads"] or "default"
    ax.set_title(f"mconv bench: batch {report['batch']}, threads {threads}", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    except OSError as e:
        raise InputError(f"--plot {dest}: cannot write the chart: {e}") from e
    finally:
        plt.close(fig)
