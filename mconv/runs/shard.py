"""``mconv run --shard I/N``: a deterministic split of a batch's jobs over N runs.

A *job* is one target entry of one recipe (recipe name, target, precision, label). The
split depends only on the jobs themselves, never on the order of the recipe files on the
command line: jobs are sorted by their key, then assigned greedily, most expensive first
(longest processing time first), each to the shard with the least estimated cost so far
(ties: the lower shard index). Shards are numbered 1..N, as CI matrices count.

A job's cost is an estimate: the size of the recipe's source file (a factory without a
checkpoint counts as :data:`DEFAULT_SOURCE_BYTES`), doubled for INT8 (calibration). A
recipe whose targets land in several shards is exported in each of them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from mconv.errors import UsageError
from mconv.recipe import LoadedRecipe

DEFAULT_SOURCE_BYTES = 1 << 20
PRECISION_WEIGHT = {"int8": 2.0}
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Job:
    """One target of one recipe."""

    recipe: str
    target: str
    precision: str
    label: str
    cost: float

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.recipe, self.target, self.precision, self.label)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (1 <= I <= N) -> ``(I, N)``; anything else is a usage error (exit 2)."""
    m = _SHARD.match(text or "")
    if not m:
        raise UsageError(f"--shard {text}: expected I/N, shards numbered 1..N, e.g. --shard 2/4")
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 1 <= index <= count:
        raise UsageError(
            f"--shard {text}: shards are numbered 1..N; expected I/N with 1 <= I <= N, e.g. --shard 1/{max(count, 1)}"
        )
    return index, count


def source_bytes(recipe: LoadedRecipe) -> int:
    """The size of the recipe's source file (the default for a factory without a checkpoint)."""
    src = recipe.spec.source
    for p in (src.path, src.resource, src.checkpoint):
        if p and Path(p).is_file():
            return Path(p).stat().st_size
    return DEFAULT_SOURCE_BYTES


def expand(recipes: list[LoadedRecipe]) -> list[Job]:
    """Every job of the batch, sorted by key."""
    jobs = []
    for r in recipes:
        size = source_bytes(r)
        for t in r.spec.targets:
            jobs.append(Job(r.name, t.target, t.precision, t.label, size * PRECISION_WEIGHT.get(t.precision, 1.0)))
    return sorted(jobs, key=lambda j: j.key)


def split(jobs: list[Job], count: int) -> list[list[Job]]:
    """``count`` shards (lists of jobs sorted by key), balanced by cost (LPT)."""
    shards: list[list[Job]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for job in sorted(jobs, key=lambda j: (-j.cost, j.key)):
        i = min(range(count), key=lambda k: (loads[k], k))
        shards[i].append(job)
        loads[i] += job.cost
    return [sorted(s, key=lambda j: j.key) for s in shards]


def balance(shards: list[list[Job]]) -> float:
    """Max over mean estimated cost per shard (1.0 is a perfect split)."""
    loads = [sum(j.cost for j in s) for s in shards]
    mean = sum(loads) / len(loads) if loads else 0.0
    return max(loads) / mean if mean else 1.0


def select(recipes: list[LoadedRecipe], index: int, count: int) -> list[LoadedRecipe]:
    """The recipes of shard ``index`` of ``count`` (in the given order), each limited to its
    jobs (``only``); recipes without a job in the shard are left out."""
    mine = split(expand(recipes), count)[index - 1]
    labels: dict[str, list[str]] = {}
    for j in mine:
        labels.setdefault(j.recipe, []).append(j.label)
    out = []
    for r in recipes:
        if r.name in labels:
            keep = [t.label for t in r.spec.targets if t.label in labels[r.name]]
            out.append(dataclasses.replace(r, only=keep))
    return out


def shard_record(recipes: list[LoadedRecipe], index: int, count: int) -> dict:
    """What a shard's summary records so that ``mconv report merge`` can check and order."""
    return {
        "index": index,
        "count": count,
        "recipes": [{"name": r.name, "recipe": r.file, "targets": [t.label for t in r.spec.targets]} for r in recipes],
        "jobs": [[j.recipe, j.label] for j in split(expand(recipes), count)[index - 1]],
    }
