"""Kept for callers of ``mconv.runjobs``: ``mconv run`` lives in the package :mod:`mconv.runs`."""

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
