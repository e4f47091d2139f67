"""``mconv run --shard I/N`` and ``mconv report merge``: every job in exactly one shard
whatever the order of the recipe files, and the merged shards equal a single run."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from mconv.recipe import load_recipes
from mconv.runs.shard import expand, select, split
from tests.conftest import assert_clean_error
from tests.models import conv_bn_relu_model

TARGETS = [("onnx", "fp32"), ("onnx", "fp16"), ("ncnn", "fp32"), ("onnx", "int8"), ("ncnn", "fp16")]


def _recipe_text(model: str, targets: list[tuple[str, str]], extra: str = "") -> str:
    lines = ["version: 1", "source:", f"  path: {model}"]
    lines.append("targets:")
    for target, precision in targets:
        lines += [f"  - target: {target}", f"    precision: {precision}"]
        if precision == "int8":
            lines += ["    calib:", "      synthetic: {kind: normal, seed: 0}", "      count: 4"]
    lines += ["verify:", "  samples: 1"]
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)


def _synthetic_set(d: Path) -> list[Path]:
    """8 recipes, 23 jobs; models of different sizes (the split's cost)."""
    d.mkdir(parents=True, exist_ok=True)
    counts = [1, 2, 3, 4, 5, 2, 3, 3]
    assert sum(counts) == 23
    paths = []
    for i, n in enumerate(counts):
        onnx.save(conv_bn_relu_model(channels=4 * (i + 1), seed=i), str(d / f"m{i}.onnx"))
        p = d / f"r{i}.yaml"
        p.write_text(_recipe_text(f"m{i}.onnx", TARGETS[:n]))
        paths.append(p)
    return paths


def _keys(shards) -> list[list[tuple]]:
    return [[j.key for j in s] for s in shards]


def test_every_job_in_exactly_one_shard_whatever_the_file_order(tmp_path):
    paths = _synthetic_set(tmp_path)
    recipes = load_recipes(paths)
    every = sorted((r.name, t.target, t.precision, t.label) for r in recipes for t in r.spec.targets)
    assert len(every) == 23
    for n in range(1, 6):
        shards = split(expand(recipes), n)
        flat = sorted(k for s in _keys(shards) for k in s)
        assert flat == every, f"N={n}"
        for seed in range(3):
            shuffled = list(paths)
            random.Random(seed).shuffle(shuffled)
            assert _keys(split(expand(load_recipes(shuffled)), n)) == _keys(shards), f"N={n}, order {seed}"
        # LPT's bound: no shard exceeds the mean by more than the largest job.
        loads = [sum(j.cost for j in s) for s in shards]
        biggest = max(j.cost for j in expand(recipes))
        assert max(loads) <= sum(loads) / n + biggest
        # select() hands each shard's recipes their own targets only, the order of the files kept.
        built = sorted(
            (r.name, t.target, t.precision, t.label)
            for i in range(1, n + 1)
            for r in select(recipes, i, n)
            for t in r.targets()
        )
        assert built == every


@pytest.mark.parametrize("value", ["0/3", "4/3", "1/0", "a/b", "2", "-1/2"])
def test_a_bad_shard_is_a_usage_error(tmp_path, mconv_proc, value):
    (path,) = _synthetic_set(tmp_path)[:1]
    r = mconv_proc("run", path, "--shard", value, "-o", tmp_path / "out")
    assert_clean_error(r, 2, f"--shard {value}", "1..N")
    assert not (tmp_path / "out").exists()


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mconv", *map(str, args)], capture_output=True, text=True, timeout=600)


def _strip(o, root: Path):
    """Drop what legitimately differs between runs: times and the output folder's path."""
    if isinstance(o, dict):
        return {k: _strip(v, root) for k, v in o.items() if k not in ("seconds", "out_dir", "artifacts", "shard")}
    if isinstance(o, list):
        return [_strip(v, root) for v in o]
    if isinstance(o, str) and o.startswith(str(root)):
        return "<out>" + o[len(str(root)) :]
    return o


def _tree(out: Path) -> dict:
    """summary.json and every report.json of an output folder, stripped."""
    docs = {"summary": json.loads((out / "summary.json").read_text())}
    for p in sorted(out.glob("*/report.json")):
        docs[p.parent.name] = json.loads(p.read_text())
    return _strip(docs, out)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """3 recipes (7 jobs, one verification failure: exit 3), run once as a single run."""
    d = tmp_path_factory.mktemp("shards")
    onnx.save(conv_bn_relu_model(channels=8, seed=1), str(d / "a.onnx"))
    onnx.save(conv_bn_relu_model(channels=4, seed=2), str(d / "b.onnx"))
    (d / "a.yaml").write_text(_recipe_text("a.onnx", TARGETS[:4]))
    (d / "b.yaml").write_text(_recipe_text("b.onnx", [("ncnn", "fp32"), ("onnx", "fp32")]))
    strict = "  - target: onnx\n    precision: fp16\n    name: strict\n    verify: {rtol: 0.0}\n"
    (d / "c.yaml").write_text(_recipe_text("b.onnx", []).replace("targets:\n", "targets:\n" + strict))
    recipes = [d / "b.yaml", d / "a.yaml", d / "c.yaml"]
    single = _run("run", *recipes, "-o", d / "single")
    assert single.returncode == 3, single.stderr
    return d, recipes, single


@pytest.mark.parametrize("n", [2, 3])
def test_merged_shards_equal_the_single_run(batch, n):
    d, recipes, single = batch
    dirs = []
    for i in range(1, n + 1):
        out = d / f"n{n}_shard{i}"
        r = _run("run", *recipes, "--shard", f"{i}/{n}", "-o", out)
        assert r.returncode in (0, 3), r.stderr
        assert r.stderr == "" or r.stderr.startswith("mconv: error: 1 of "), r.stderr
        dirs.append(out)
    jobs = [tuple(j) for o in dirs for j in json.loads((o / "summary.json").read_text())["shard"]["jobs"]]
    assert len(jobs) == len(set(jobs)) == 7
    merged = d / f"merged{n}"
    r = _run("report", "merge", *reversed(dirs), "-o", merged)
    assert r.returncode == single.returncode == 3, r.stderr
    assert "strict" in r.stderr and "c (" in r.stderr
    assert _tree(merged) == _tree(d / "single")
    # the artifacts came along: every path a report lists is there
    for p in merged.glob("*/report.json"):
        for step in json.loads(p.read_text())["steps"]:
            for a in step.get("artifacts", []):
                assert (p.parent / a["path"]).exists(), a
    # a missing shard is named
    r = _run("report", "merge", *dirs[1:], "-o", d / f"incomplete{n}")
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == f"mconv: error: report merge: shard(s) 1/{n} missing; give each of the {n} shards' folders once"
    )
