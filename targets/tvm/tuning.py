"""MetaSchedule tuning for ``--target tvm`` (``tune=N``), with records cached by model hash.

The cache key is a SHA-256 over the ONNX bytes the writer compiles, the LLVM target (CPU
model, core count), the precision and the TVM version: the records of one key are valid
schedules for exactly that program. A key's folder (``$MCONV_CACHE/tvm/<key>``, default
``~/.cache/mconv/tvm/<key>``) holds MetaSchedule's JSON database and ``mconv.json`` (trials
done so far). A build asking for ``tune=N`` where ``M`` trials are cached runs ``N - M``
more (none when ``M >= N``) and compiles with the best records; a lock file keeps two
builds from writing one database at once.

Candidates are built and timed in this process (:func:`_measure_classes`)
instead of MetaSchedule's local builder and runner: those send work to worker processes
through cloudpickle and give each candidate 30 s, which on a busy machine is spent
starting the worker (every trial of a 4-trial test timed out here). The cost model is
``xgb`` when xgboost is importable (the ``tvm`` extra installs ``xgboost-cpu``), else
``random`` (evolutionary search, measured on the machine either way); on small_cnn, 120
trials found conv schedules 2-4x faster with ``xgb`` (27-34 us vs 78-106 us).

A call's trials are spread over all the tasks (:func:`trials_per_iter`); functions left
without a record (fewer trials than tasks) get the rule schedule of ``schedule.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mconv.errors import ConversionError
from mconv.targets.tvm.compile import import_tvm

CACHE_ENV = "MCONV_CACHE"


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "mconv")
    return Path(base).expanduser() / "tvm"


def cache_key(onnx_bytes: bytes, target: Any, precision: str) -> str:
    tvm = import_tvm()
    h = hashlib.sha256()
    for part in (onnx_bytes, str(target).encode(), precision.encode(), tvm.__version__.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:32]


@dataclass
class TuningResult:
    """What a build's tuning did; ``to_json`` goes into the artifact's meta."""

    key: str
    folder: Path
    requested: int
    cached: int  # trials found in the cache before this build
    ran: int  # trials this build ran
    seconds: float
    cost_model: str

    @property
    def reused(self) -> bool:
        return self.cached > 0

    def message(self) -> str:
        if self.ran == 0:
            return (
                f"tvm: reused {self.cached} cached tuning trials from {self.folder} "
                f"(same model, target and precision); none run (tune={self.requested})"
            )
        extra = f" on top of {self.cached} cached" if self.cached else ""
        return f"tvm: ran {self.ran} MetaSchedule trials{extra} in {self.seconds:.0f} s; records kept in {self.folder}"

    def to_json(self) -> dict[str, Any]:
        return {
            "trials": self.requested,
            "cached_trials": self.cached,
            "trials_run": self.ran,
            "reused": self.reused,
            "cache": str(self.folder),
            "key": self.key,
            "seconds": round(self.seconds, 2),
            "cost_model": self.cost_model,
        }


@contextlib.contextmanager
def _locked(folder: Path):
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _trials_done(folder: Path) -> int:
    try:
        return int(json.loads((folder / "mconv.json").read_text())["trials"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def tune(mod: Any, target: Any, key: str, trials: int) -> TuningResult:
    """Bring the cache of ``key`` to ``trials`` trials (tuning ``mod``, made by
    ``compile.prepare``, on ``target``)."""
    folder = cache_root() / key
    t0 = time.perf_counter()
    with _locked(folder):
        done = _trials_done(folder)
        ran = max(0, trials - done)
        cost_model = _cost_model()
        if ran:
            folder.mkdir(parents=True, exist_ok=True)
            _run_search(mod, target, folder, ran, cost_model)
            meta = {"trials": done + ran, "target": str(target), "tvm": import_tvm().__version__}
            tmp = folder / "mconv.json.tmp"
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, folder / "mconv.json")
    return TuningResult(key, folder, trials, done, ran, time.perf_counter() - t0, cost_model)


def _cost_model() -> str:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def trials_per_iter(trials: int, tasks: int) -> int:
    """Trials per task per scheduler iteration, so that one call's budget reaches every task.

    MetaSchedule's task scheduler starts with a round robin over the tasks in extraction
    order, giving each ``num_trials_per_iter`` trials, and stops once ``max_trials_global``
    are spent. With ``num_trials_per_iter = trials`` (or 64) the whole budget went to the
    first task or two, which extraction puts first: the classifier's matmul, a reshape, a
    mean. The convolutions were never measured, so "tuned" libraries were untuned where the
    time goes (small_cnn: 128 trials, 6 tasks, 2 of them tuned).
    """
    return max(1, min(64, trials // max(1, tasks)))


def population(per_iter: int) -> int:
    """The evolutionary search's population for ``per_iter`` trials per iteration: TVM's 512
    from 32 trials up, 16 candidates per trial below (at least 128).

    Each iteration samples and scores the whole population whatever it then measures; on
    ResNet-18 that search, ~20 s per task, was most of a round. small_cnn, 48 trials (8 per
    task), xgb: 63 s with 128 vs 131 s with 512, for a library 11% slower (0.33 vs 0.30 ms),
    so twice the trials in the same time.
    """
    return max(128, min(512, 16 * per_iter))


def _run_search(mod: Any, target: Any, folder: Path, trials: int, cost_model: str) -> None:
    from tvm.s_tir import meta_schedule as ms

    from mconv.quiet import quiet

    try:
        with quiet():  # MetaSchedule logs every round; its log files stay in the cache folder
            tasks = ms.relax_integration.extract_tasks(mod, target)
            if not tasks:
                return
            per_iter = trials_per_iter(trials, len(tasks))
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                tasks,
                work_dir=str(folder),
                strategy=ms.search_strategy.EvolutionarySearch(population_size=population(per_iter)),
                num_threads=os.cpu_count() or 1,
                seed=0,
            )
            ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(folder),
                max_trials_global=trials,
                num_trials_per_iter=per_iter,
                builder=_in_process_builder(),
                runner=_in_process_runner(),
                database=ms.database.JSONDatabase(work_dir=str(folder)),
                cost_model=cost_model,
                # Not the default's RemoveBuildArtifact: candidates live in memory, not in files.
                measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()],
            )
    except Exception as e:
        raise ConversionError(f"MetaSchedule tuning failed: {str(e).strip().splitlines()[-1][:300]}") from e


def _measure_classes() -> tuple[type, type]:
    """The builder and runner classes (made on first use: they subclass tvm's)."""
    import_tvm()
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common, run_evaluator_common

    built: dict[str, Any] = {}

    @derived_object
    class Builder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for inp in build_inputs:
                try:
                    key = f"mconv-candidate-{len(built)}-{time.monotonic_ns()}"
                    built[key] = default_build(inp.mod, inp.target, None)
                    results.append(BuilderResult(key, None))
                except Exception as e:
                    results.append(BuilderResult(None, f"{type(e).__name__}: {e}"))
            return results

    config = EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False)
    fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True)

    @derived_object
    class Runner(PyRunner):
        def run(self, runner_inputs):
            futures = []
            for inp in runner_inputs:
                rt_mod = built.pop(inp.artifact_path, None)
                try:
                    dev = tvm.cpu()
                    args = alloc_argument_common(fill, dev, [a.as_json() for a in inp.args_info], 1)
                    futures.append(LocalRunnerFuture(res=run_evaluator_common(rt_mod, dev, config, args)))
                except Exception as e:
                    futures.append(LocalRunnerFuture(error_message=f"{type(e).__name__}: {e}"))
            return futures

    return Builder, Runner


_CLASSES: tuple[type, type] | None = None


def _classes() -> tuple[type, type]:
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _measure_classes()
    return _CLASSES


def _in_process_builder() -> Any:
    return _classes()[0]()


def _in_process_runner() -> Any:
    return _classes()[1]()
