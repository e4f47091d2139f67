"""``mconv run``: execute validated recipes, each in its own process, and report.

Every recipe runs its steps in order: ``checkpoint`` (when the source is a factory
without a committed checkpoint), ``export`` (PyTorch -> ONNX, verified against
PyTorch; an ONNX source is copied with the recipe's input shapes), ``passes``
(verified against the export with onnxruntime), ``data`` (synthetic samples, when
the recipe asks for them), then per target ``build``, ``verify`` (against the
exported ONNX with onnxruntime) and ``bench`` (when enabled). A failed target does
not stop the others; a failed export or passes step ends that recipe.

Recipes run in spawned child processes, ``jobs`` at a time, so a runtime that
crashes natively fails its recipe only. Each child sends step events to the parent
over a queue; the parent shows rich progress bars on a terminal, or one plain line
per step otherwise (and with ``--json``, on stderr). What the libraries print goes
to ``<recipe>/run.log``. Each recipe folder gets ``report.json`` and ``report.md``;
the output folder gets ``summary.json`` and ``summary.md``.

Exit codes: 0 when every step of every recipe passed or was skipped, 3 when the only
failures are verification failures, 1 otherwise.

Modules: :mod:`.plan` (the steps a recipe will run), :mod:`.steps` (one recipe's steps,
RecipeRun), :mod:`.data` (synthetic samples), :mod:`.report` (reports, summary, exit
codes, versions), :mod:`.display` (progress), :mod:`.worker` (a recipe's child process:
run.log, events), :mod:`.scheduler` (run_batch, the local executor), :mod:`.shard`
(``--shard I/N``: jobs, the deterministic split), :mod:`.merge` (``mconv report merge``)
and :mod:`.ray_executor` (``--executor ray[:ADDRESS]``).
"""

from mconv.runs.data import SYNTHETIC_COUNT, synthetic_samples
from mconv.runs.display import PlainDisplay, RichDisplay
from mconv.runs.plan import plan
from mconv.runs.report import (
    CORE_PACKAGES,
    exit_code_of,
    failure_message,
    render_report_md,
    render_summary_md,
    versioned_packages,
    versions,
)
from mconv.runs.scheduler import Event, RunOptions, run_batch
from mconv.runs.steps import CALIB_COUNT, RecipeRun

__all__ = [
    "CALIB_COUNT",
    "CORE_PACKAGES",
    "SYNTHETIC_COUNT",
    "Event",
    "PlainDisplay",
    "RecipeRun",
    "RichDisplay",
    "RunOptions",
    "exit_code_of",
    "failure_message",
    "plan",
    "render_report_md",
    "render_summary_md",
    "run_batch",
    "synthetic_samples",
    "versioned_packages",
    "versions",
]
