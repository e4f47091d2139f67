"""``mconv run``: batches that continue past failures, exit codes, reports, --set, skipped
hardware targets, and the repo's recipes end to end. Every run is a real ``mconv`` process."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import onnx
import pytest

from tests.conftest import ROOT
from tests.models import conv_bn_relu_model

ONNX_RECIPE = """\
version: 1
source:
  path: model.onnx
targets:
  - target: onnx
    precision: fp32
  - target: onnx
    precision: fp16
verify:
  samples: 1
"""


def _recipes(d: Path, **texts: str) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    onnx.save(conv_bn_relu_model(), str(d / "model.onnx"))
    out = []
    for name, text in texts.items():
        p = d / f"{name}.yaml"
        p.write_text(textwrap.dedent(text))
        out.append(p)
    return out


def _report(out: Path, name: str) -> dict:
    return json.loads((out / name / "report.json").read_text())


def _step(report: dict, name: str) -> dict:
    return next(s for s in report["steps"] if s["step"] == name)


@pytest.fixture(scope="module")
def broken_batch(tmp_path_factory):
    """good + corrupt-source + crashing recipes, run with -j 2 and --json."""
    from tests.conftest import CliResult

    d = tmp_path_factory.mktemp("batch")
    good, broken, crash = _recipes(
        d / "recipes",
        good=ONNX_RECIPE,
        broken=ONNX_RECIPE.replace("model.onnx", "broken.onnx"),
        crash=ONNX_RECIPE.replace("path: model.onnx", "factory: crash.py:Net"),
    )
    (d / "recipes" / "broken.onnx").write_bytes(b"this is not a protobuf" * 10)
    (d / "recipes" / "crash.py").write_text(
        "import os, signal\n\ndef Net():\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    out = d / "out"
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "mconv", "run", good, broken, crash, "-o", out, "-j", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return CliResult(p.returncode, p.stdout, p.stderr), out


def test_broken_recipe_does_not_stop_the_batch(broken_batch):
    r, out = broken_batch
    assert r.code == 1, r.err
    obj = json.loads(r.out)  # --json: one object on stdout, logs on stderr
    assert obj["ok"] is False and obj["exit_code"] == 1
    assert "2 of 3 recipe(s) failed" in obj["error"]
    rows = {x["name"]: x for x in obj["report"]["recipes"]}
    assert rows["good"]["status"] == "passed" and rows["good"]["exit_code"] == 0
    assert rows["good"]["steps"] == {"ok": 6, "failed": 0, "skipped": 0}
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["failures"][0].startswith("export: ")
    assert rows["crash"]["status"] == "failed"
    assert "died (signal 11)" in rows["crash"]["failures"][0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 1 and len(summary["recipes"]) == 3
    md = (out / "summary.md").read_text()
    assert "| good |" in md and "| broken |" in md and "FAILED" in md


def test_batch_logs_go_to_stderr_with_json(broken_batch):
    r, _ = broken_batch
    assert re.search(r"good: build onnx_fp32 ok \(", r.err)
    assert re.search(r"broken: export failed \(.*\): ", r.err)
    assert "\x1b[" not in r.err  # plain lines, no terminal control codes


def test_report_json_has_every_step(broken_batch):
    _, out = broken_batch
    rep = _report(out, "good")
    assert rep["status"] == "passed" and rep["exit_code"] == 0
    names = [s["step"] for s in rep["steps"]]
    assert names == ["export", "passes", "build onnx_fp32", "verify onnx_fp32", "build onnx_fp16", "verify onnx_fp16"]
    for s in rep["steps"]:
        assert s["status"] == "ok" and s["seconds"] >= 0
    build = _step(rep, "build onnx_fp16")
    (art,) = build["artifacts"]
    assert art["path"] == "onnx_fp16/good.onnx"
    assert art["bytes"] == (out / "good" / art["path"]).stat().st_size > 0
    v = _step(rep, "verify onnx_fp16")["verification"]
    assert v["passed"] is True and v["tolerance"] == "cos>=0.9999" and v["outputs"][0]["cosine"] > 0.9999
    assert _step(rep, "passes")["verification"]["passed"] is True
    assert rep["versions"]["mconv"] and rep["versions"]["onnxruntime"] and "openvino" in rep["versions"]
    assert (out / "good" / "run.log").is_file()


def test_report_md_has_tables(broken_batch):
    _, out = broken_batch
    md = (out / "good" / "report.md").read_text()
    assert md.startswith("# good: PASSED (exit 0)")
    for heading in ("## Steps", "## Verification", "## Artifacts", "## Versions"):
        assert heading in md
    assert "| verify onnx_fp16 | ok |" in md
    assert "| build onnx_fp16 | onnx_fp16/good.onnx |" in md
    broken = (out / "broken" / "report.md").read_text()
    assert broken.startswith("# broken: FAILED (exit 1)") and "| export | failed |" in broken


def test_set_overrides_reach_the_run(mconv_proc, tmp_path):
    (p,) = _recipes(tmp_path / "r", one=ONNX_RECIPE)
    out = tmp_path / "out"
    r = mconv_proc("run", p, "-o", out, "--set", "targets.1.precision=fp32", "--set", "targets.1.name=again",
                   "--set", "verify.rtol=1e-3")  # fmt: skip
    assert r.code == 0, r.err
    rep = _report(out, "one")
    assert rep["overrides"] == ["targets.1.precision=fp32", "targets.1.name=again", "verify.rtol=1e-3"]
    assert _step(rep, "verify again")["precision"] == "fp32"
    for name in ("passes", "verify onnx_fp32", "verify again"):
        assert _step(rep, name)["verification"]["tolerance"] == "rel<=0.001"
    assert (out / "one" / "again" / "one.onnx").is_file()
    # not a terminal: one plain line per step on stdout, then the summary
    lines = [ln for ln in r.out.splitlines() if "one: " in ln]
    assert any(ln.endswith("one: started (" + str(p) + ", 6 steps)") for ln in lines)
    assert sum(1 for ln in lines if re.search(r"one: (export|passes|build \S+|verify \S+) ok \(", ln)) == 6


def test_only_verification_failures_exit_3(mconv_proc, tmp_path):
    text = ONNX_RECIPE + "  tolerances:\n    fp16: {rtol: 0.0}\n"
    (p,) = _recipes(tmp_path / "r", strict=text)
    out = tmp_path / "out"
    r = mconv_proc("run", p, "-o", out)
    assert r.code == 3, r.err
    assert "1 of 1 recipe(s) failed: strict (verify onnx_fp16:" in r.err
    rep = _report(out, "strict")
    assert rep["exit_code"] == 3
    v = _step(rep, "verify onnx_fp16")
    assert v["status"] == "failed" and v["exit_code"] == 3 and v["verification"]["passed"] is False
    assert _step(rep, "verify onnx_fp32")["status"] == "ok"


def _trt_missing() -> str | None:
    from mconv.targets import get_target

    return get_target("trt").runtime_missing()


@pytest.mark.skipif(_trt_missing() is None, reason="TensorRT and a GPU are present: the target builds for real")
def test_tensorrt_recipe_is_skipped_without_gpu(mconv_proc, tmp_path):
    out = tmp_path / "out"
    r = mconv_proc("run", ROOT / "recipes" / "tinynet_trt.yaml", "-o", out, "--json")
    assert r.code == 0, r.err
    rep = _report(out, "tinynet_trt")
    build = _step(rep, "build trt_fp16")
    assert build["status"] == "skipped" and "tensorrt" in build["reason"]
    assert json.loads(r.out)["recipes"][0]["skipped"] == [f"build trt_fp16: {build['reason']}"]
    assert not (out / "tinynet_trt" / "trt_fp16").exists()


@pytest.mark.skipif(_trt_missing() is None, reason="TensorRT and a GPU are present: the target builds for real")
def test_required_tensorrt_recipe_fails_without_gpu(mconv_proc, tmp_path):
    out = tmp_path / "out"
    r = mconv_proc("run", ROOT / "recipes" / "tinynet_trt.yaml", "-o", out, "--set", "targets.0.required=true")
    assert r.code == 1, r.err
    assert "required: true, but target 'trt' cannot run here" in r.err
    build = _step(_report(out, "tinynet_trt"), "build trt_fp16")
    assert build["status"] == "failed" and build["exit_code"] == 1


def _ncnn_loads() -> bool:
    from mconv.targets import all_targets

    entry = next((e for e in all_targets() if e.name == "ncnn"), None)
    if entry is None or entry.error:
        return False
    try:
        entry.load()
    except Exception:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _ncnn_loads(), reason="the ncnn target does not load; the repo recipes build ncnn")
def test_repo_recipes_batch(mconv_proc, tmp_path):
    """The CI command: `mconv run recipes/*.yaml -j 2` builds, verifies and reports everything."""
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    out = tmp_path / "out"
    r = mconv_proc("run", *recipes, "-j", "2", "-o", out, "--json", timeout=600)
    assert r.code == 0, r.err[-3000:]
    summary = json.loads(r.out)
    assert summary["ok"] is True and len(summary["recipes"]) == len(recipes)
    for row in summary["recipes"]:
        rep = _report(out, row["name"])
        assert rep["status"] == "passed", (row["name"], row["failures"])
        assert (out / row["name"] / "report.md").is_file()
        for s in rep["steps"]:
            if s["step"].startswith("build ") and s["status"] == "ok":
                assert s["artifacts"] and all((out / row["name"] / a["path"]).is_file() for a in s["artifacts"])
    built = {s["step"] for row in summary["recipes"] for s in _report(out, row["name"])["steps"]}
    for want in ("openvino_fp32", "openvino_fp16", "openvino_int8", "ncnn_fp32", "ncnn_fp16", "ncnn_int8"):
        assert f"verify {want}" in built, want
    assert (out / "summary.md").is_file()


@pytest.mark.slow
@pytest.mark.skipif(_ncnn_loads(), reason="the ncnn target loads: test_repo_recipes_batch runs every recipe")
def test_repo_recipes_without_ncnn(mconv_proc, tmp_path):
    """Without a loadable ncnn target, its builds fail alone; the OpenVINO/ONNX targets still pass."""
    out = tmp_path / "out"
    r = mconv_proc("run", ROOT / "recipes" / "shufflenet.yaml", ROOT / "recipes" / "tinynet.yaml", "-j", "2",
                   "-o", out, "--json", timeout=600)  # fmt: skip
    assert r.code == 1, r.err[-3000:]
    for name in ("shufflenet", "tinynet"):
        for s in _report(out, name)["steps"]:
            if "ncnn" in s["step"]:
                assert s["status"] == "failed", s
            else:
                assert s["status"] == "ok", s
