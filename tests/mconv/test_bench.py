"""``mconv bench``: three real backends measured in one interleaved run, a crashing runner,
and bad options."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from tests.conftest import assert_clean_error
from tests.mconv.test_verify import build, chain_model, double_file
from tests.mconv.test_verify import doubles as doubles_fixture

# The test-double targets, registered for the test that asks for them.
doubles = doubles_fixture

ITERS = 20


@pytest.fixture(scope="module")
def arts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bench")
    src = d / "chain.onnx"
    onnx.save(chain_model(), str(src))
    out = {t: build(src, t, d / f"chain_{t}") for t in ("onnx", "openvino", "ncnn")}
    dyn = d / "dyn.onnx"
    onnx.save(chain_model(batch="N"), str(dyn))
    out["dynamic"] = build(dyn, "onnx", d / "dyn_onnx")
    return out


def test_three_backends_in_one_json_report(cli, arts):
    r = cli("bench", arts["onnx"], arts["openvino"], arts["ncnn"], "--iters", ITERS, "--warmup", "2", "--json")
    assert r.code == 0, r.err
    rep = r.json
    assert rep["batch"] == 1 and rep["iters"] == ITERS
    assert [x["target"] for x in rep["results"]] == ["onnx", "openvino", "ncnn"]
    for row in rep["results"]:
        art = Path(row["path"])
        assert row["status"] == "ok" and row["iterations"] == ITERS
        lat = row["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"]
        assert row["throughput"] == pytest.approx(1e3 / lat["mean"], rel=1e-6)  # batch 1, sequential
        assert row["load_ms"] > 0
        assert 20 < row["peak_rss_mb"] < 4096  # the runner process's own peak, not mconv's
        files = [art, art.with_suffix(".bin")] if art.suffix != ".onnx" else [art]
        files += [art.with_suffix(".mconv.json")] if art.suffix == ".param" else []
        assert row["size_bytes"] == sum(f.stat().st_size for f in files)
    assert rep["results"][0]["vs_first"] == 1.0
    med = [x["latency_ms"]["median"] for x in rep["results"]]
    assert rep["results"][2]["vs_first"] == pytest.approx(med[2] / med[0])


def test_table_and_plot(cli, arts, tmp_path):
    png = tmp_path / "lat.png"
    r = cli("bench", arts["onnx"], arts["openvino"], arts["ncnn"], "--iters", "10", "--warmup", "1", "--plot", png)
    assert r.code == 0, r.err
    for col in ("size", "load+1st ms", "median ms", "p90 ms", "p99 ms", "min ms", "items/s", "peak RSS", "vs first"):
        assert col in r.out
    for name, target in (("chain.onnx", "onnx"), ("chain.xml", "openvino"), ("chain.param", "ncnn")):
        line = next(ln for ln in r.out.splitlines() if name in ln)
        assert target in line
        # size, load, 4 latencies, throughput, RSS and ratio: all numbers
        assert len(re.findall(r"\d+\.\d+", line)) >= 8, line
        assert re.search(r"\d+ MB", line) and re.search(r"\d\.\d\dx", line)
    assert f"wrote {png}" in r.out.replace("\n", "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crashing_runner_fails_its_row_only(cli, arts, tmp_path, doubles):
    segv = double_file(tmp_path, "segv", "segv")
    r = cli("bench", arts["onnx"], segv, arts["ncnn"], "--iters", "5", "--warmup", "1", "--json")
    assert r.code == 1
    assert "segv.double (double): crashed" in r.err
    rows = r.json["report"]["results"]
    assert rows[1]["status"] == "crashed" and "SIGSEGV" in rows[1]["error"]
    assert [rows[0]["iterations"], rows[2]["iterations"]] == [5, 5]


def test_missing_runtime_and_hang(cli, arts, tmp_path, doubles):
    nort = tmp_path / "m.nort"
    nort.write_text("")
    hang = double_file(tmp_path, "hang", "hang")
    r = cli("bench", nort, hang, arts["onnx"], "--iters", "3", "--timeout", "2", "--json")
    assert r.code == 1
    rows = r.json["report"]["results"]
    assert rows[0]["status"] == "no-runtime" and "pip install 'mconv[noruntime]'" in rows[0]["error"]
    assert rows[1]["status"] == "timeout" and "timed out after 2 s" in rows[1]["error"]
    assert rows[2]["status"] == "ok" and rows[2]["iterations"] == 3


def test_seconds_interleaves_equal_counts(cli, arts):
    r = cli("bench", arts["onnx"], arts["ncnn"], "--seconds", "0.3", "--warmup", "0", "--json")
    assert r.code == 0, r.err
    counts = {x["iterations"] for x in r.json["results"]}
    assert len(counts) == 1 and counts.pop() >= 1


def test_batch(cli, arts):
    r = cli("bench", arts["dynamic"], "--batch", "4", "--iters", "5", "--warmup", "1", "--json")
    assert r.code == 0, r.err
    row = r.json["results"][0]
    assert r.json["batch"] == 4
    assert row["throughput"] == pytest.approx(4e3 / row["latency_ms"]["mean"], rel=1e-6)


def test_batch_the_artifact_cannot_take_is_an_input_error(cli, arts):
    r = cli("bench", arts["ncnn"], arts["dynamic"], "--batch", "2", "--iters", "2")
    assert_clean_error(r, 2, "chain.param (ncnn)", "does not fit")
    assert "dyn.onnx" in r.out  # the other artifact was still measured


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--iters", "5", "--seconds", "1"], "--iters and --seconds are exclusive"),
        (["--plot", "chart.jpg"], "give a .png file name"),
        (["--iters", "0"], "--iters must be >= 1"),
    ],
)
def test_bad_options(cli, arts, args, needle):
    assert_clean_error(cli("bench", arts["onnx"], *args), 2, needle)


def test_param_without_bin(cli, arts, tmp_path):
    param = tmp_path / "lonely.param"
    param.write_text(arts["ncnn"].read_text())
    assert_clean_error(cli("bench", param), 2, str(param), "lonely.bin")
