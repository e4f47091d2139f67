"""``mconv verify`` and ``mconv bench`` (registered on the app when mconv.cli is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mconv.cli.app import app
from mconv.cli.common import (
    InputOpt,
    JsonOpt,
    LayoutOpt,
    MeanOpt,
    ModelOpt,
    SizeOpt,
    StdOpt,
    TrustOpt,
    WeightsOpt,
    console,
    emit,
    export_options,
    image_options,
    tolerance_of,
)

if TYPE_CHECKING:
    from rich.table import Table

ArtifactsArg = Annotated[
    list[Path], typer.Argument(metavar="ARTIFACT...", help="Artifact files of any registered target (`mconv targets`).")
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        help="Seconds before a runner that hangs is killed (per artifact; default 120 + 60 per GiB "
        "of weights + 0.02 per node).",
    ),
]


def _wide_console():
    """The CLI's console; when writing to a pipe or file, wide enough that the tables do not fold."""
    con = console()
    if not con.is_terminal:
        con.width = max(con.width, 160)
    return con


def _num(v: Any, fmt: str = ".3g") -> str:
    if v is None:
        return ""
    try:
        return format(float(v), fmt)
    except (TypeError, ValueError):
        return str(v)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def verify(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="The original model: ONNX or any PyTorch source.")],
    artifacts: ArtifactsArg,
    inputs_data: Annotated[
        str | None, typer.Option("--inputs", help="Samples: folder/glob of .npy/.npz/images (default: random).")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", help="How many samples to use.")] = 2,
    mean: MeanOpt = None,
    std: StdOpt = None,
    size: SizeOpt = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="Relative tolerance (overrides the default).")] = None,
    atol: Annotated[float | None, typer.Option("--atol", help="Absolute tolerance added to --rtol.")] = None,
    min_cos: Annotated[float | None, typer.Option("--min-cos", help="Minimum cosine similarity.")] = None,
    locate: Annotated[
        bool, typer.Option("--locate", help="For a failing artifact, find the first layer that diverges.")
    ] = False,
    timeout: TimeoutOpt = None,
    input: InputOpt = None,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    weights: WeightsOpt = None,
    layout: LayoutOpt = None,
    as_json: JsonOpt = False,
):
    """Check that each artifact computes what SOURCE computes (onnxruntime), each runtime in a child process.

    Default tolerances follow the artifact's precision (fp32: rel <= 1e-4, or up to 20x the
    model's rounding floor, measured by running the source again in onnxruntime with
    optimizations off and weights one ulp away; fp16: cos >= 0.9999; int8: cos >= 0.99).
    Outputs behind TopK/NonMaxSuppression are compared after matching their rows. --rtol, --atol
    and --min-cos replace the defaults. Exit 3 when an artifact misses its tolerance,
    crashes or hangs.
    """
    from mconv.verification import VerifyRequest, raise_for_report
    from mconv.verification import verify as run_verify

    export = export_options(input, None, None, "auto", model, trust_pickle, weights, layout)
    req = VerifyRequest(
        source=source,
        artifacts=list(artifacts),
        inputs=inputs_data,
        samples=samples,
        tolerance=tolerance_of(rtol, atol, min_cos),
        timeout=timeout,
        locate=locate,
        shapes={s.name: s.shape for s in export.inputs if getattr(s, "shape", None)},
        image=image_options(mean, std, size),
        export=export,
    )
    report = run_verify(req)
    if not as_json or report["passed"]:
        emit(report, as_json, _render_verify)
    raise_for_report(report)  # on failure, --json prints the report inside the error object


def _render_verify(r: dict[str, Any]) -> None:
    con = _wide_console()
    con.print(_verify_table(r))
    for row in r["results"]:
        if row.get("advice"):
            con.print(f"{Path(row['path']).name}: {row['advice']}")
    for row in r["results"]:
        loc = row.get("locate")
        if loc:
            con.print(_locate_line(Path(row["path"]).name, loc))


def _verify_table(r: dict[str, Any]) -> Table:
    """One row per output of each artifact (one for an artifact that produced none)."""
    from rich.table import Table

    t = Table(
        title=f"{r['source']} vs artifacts: onnxruntime reference, {r['samples']} sample(s) from {r['inputs']}",
        title_justify="left",
    )
    numeric = ("max abs", "rel", "floor", "x floor", "mean abs", "cosine")
    cols = ("artifact", "target", "prec", "output", "max abs", "rel", "floor", "x floor", "mean abs", "cosine")
    for col in (*cols, "top-1", "top-5"):
        t.add_column(col, justify="right" if col in numeric else "left")
    t.add_column("result")
    for row in r["results"]:
        name = Path(row["path"]).name
        if not row["outputs"]:
            t.add_row(name, row["target"], row["precision"], *[""] * 9, f"[red]{row['status']}[/red]: {row['error']}")
            continue
        for o in row["outputs"]:
            t.add_row(name, row["target"], row["precision"], *_output_cells(o, row["tolerance"]))
    return t


def _output_cells(o: dict[str, Any], tolerance: str | None) -> tuple[str, ...]:
    """The cells from "output" to "result" for one compared output."""
    tol = f" ({tolerance})" if tolerance else ""
    rule = "" if o.get("rule", "elementwise") == "elementwise" else f" by {o['rule']}"
    ok = "[green]ok[/green]" + tol if o["passed"] else f"[red]FAIL[/red] {o['reason']}{tol}"
    return (
        o["name"],
        _num(o["max_abs"]),
        _num(o["rel"]),
        _num(o.get("floor")),
        _num(o.get("ratio"), ".2g"),
        _num(o["mean_abs"]),
        _num(o["cosine"], ".6f"),
        _num(o.get("top1"), ".2f"),
        _num(o.get("top5"), ".2f"),
        ok + rule,
    )


def _locate_line(name: str, loc: dict[str, Any]) -> str:
    """What --locate found for artifact ``name``: the first diverging node, or why there is none."""
    if not loc.get("found"):
        return f"{name}: locate: {loc.get('error') or loc.get('message')}"
    before = loc.get("before")
    b = "n/a"
    if before:
        b = f"rel {_num(before['rel'])}, cos {_num(before['cosine'], '.6f')} (input '{before['tensor']}')"
    a = loc["after"]
    an = loc.get("artifact_node")
    where = f" (in the artifact: node '{an['name']}' {an['op_type']})" if an else ""
    if loc.get("span"):
        where += " (fused in the artifact: " + " -> ".join(loc["span"]) + ")"
    return (
        f"{name}: first divergence at node '{loc['node']}' ({loc['op_type']}), output '{loc['tensor']}': "
        f"before: {b} -> after: rel {_num(a['rel'])}, cos {_num(a['cosine'], '.6f')}"
        + where
        + f" [{loc['compared']} tensors compared]"
    )


@app.command()
def bench(
    artifacts: ArtifactsArg,
    threads: Annotated[int | None, typer.Option("--threads", help="Runtime threads (default: the runtime's).")] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up inferences per artifact.")] = 10,
    iters: Annotated[
        int | None, typer.Option("--iters", help="Measured inferences per artifact (default 100).")
    ] = None,
    seconds: Annotated[
        float | None, typer.Option("--seconds", help="Measure for about S seconds per artifact instead of --iters.")
    ] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Batch size of the random inputs.")] = None,
    timeout: TimeoutOpt = 600.0,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a latency bar chart (p90 whiskers) to FILE.png.")
    ] = None,
    as_json: JsonOpt = False,
):
    """Latency (median/p90/p99/min), throughput, load time, peak memory and size of each artifact.

    Every artifact runs in its own process; inferences alternate between them so that the
    figures are taken under the same machine load and their ratios hold.
    """
    from mconv.benchmark import BenchRequest, raise_for_bench
    from mconv.benchmark import bench as run_bench

    req = BenchRequest(
        artifacts=list(artifacts),
        threads=threads,
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        batch=batch,
        timeout=timeout,
        plot=plot,
    )
    report = run_bench(req)
    ok = all(r["status"] == "ok" for r in report["results"])
    if not as_json or ok:
        emit(report, as_json, _render_bench)
    raise_for_bench(report)


def _render_bench(r: dict[str, Any]) -> None:
    from rich.table import Table

    con = _wide_console()
    rows = r["results"]
    n = max((row["iterations"] for row in rows), default=0)
    t = Table(
        title=f"bench: batch {r['batch']}, threads {r['threads'] or 'default'}, {n} interleaved iterations, "
        f"{r['warmup']} warm-up",
        title_justify="left",
    )
    cols = ("artifact", "target", "prec", "size", "load+1st ms", "median ms", "p90 ms", "p99 ms", "min ms")
    for col in (*cols, "items/s", "peak RSS", "vs first"):
        t.add_column(col, justify="left" if col in ("artifact", "target", "prec") else "right")
    for row in rows:
        head = (Path(row["path"]).name, row["target"], row["precision"], _size(row["size_bytes"]))
        lat = row["latency_ms"]
        if row["status"] != "ok" or not lat:
            t.add_row(*head, f"[red]{row['status']}[/red]: {row['error']}", *[""] * 7)
            continue
        t.add_row(
            *head,
            _num(row["load_ms"], ".1f"),
            _num(lat["median"], ".3f"),
            _num(lat["p90"], ".3f"),
            _num(lat["p99"], ".3f"),
            _num(lat["min"], ".3f"),
            _num(row["throughput"], ".1f"),
            "" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f} MB",
            _num(row["vs_first"], ".2f") + "x",
        )
    con.print(t)
    for a in r.get("artifacts") or []:
        con.print(f"wrote {a}")
