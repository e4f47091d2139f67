"""What several commands share, defined once: option types, option parsing, output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

# ---- options shared by several commands (defined once) -------------------------------------
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
InputOpt = Annotated[
    list[str] | None,
    typer.Option("--input", "-i", help="Input shape NAME:1x3x224x224[:float32]; repeat per input."),
]
DynamicOpt = Annotated[
    list[str] | None, typer.Option("--dynamic", help="Dynamic axis NAME:AXIS=label, e.g. input:0=batch.")
]
OpsetOpt = Annotated[int | None, typer.Option("--opset", help="ONNX opset for export (default 17).")]
ExporterOpt = Annotated[str, typer.Option("--exporter", help="auto | dynamo | torchscript.")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Architecture for a state_dict: module.path:factory or file.py:Class."),
]
TrustOpt = Annotated[
    bool, typer.Option("--trust-pickle", help="Allow unpickling a full pickle (runs code from the file).")
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="The weights of a two-file source (Caffe's .caffemodel beside MODEL.prototxt)."),
]
LayoutOpt = Annotated[
    str | None,
    typer.Option("--layout", help="ONNX input layout of an NHWC source (TensorFlow/Keras): nhwc (default) or nchw."),
]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Image mean, e.g. 0.485,0.456,0.406.")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Image std, e.g. 0.229,0.224,0.225.")]
SizeOpt = Annotated[str | None, typer.Option("--size", help="Image size HxW, e.g. 224x224.")]
PassesOpt = Annotated[
    str | None, typer.Option("--passes", help="Comma-separated pass names instead of the default pipeline.")
]
FoldLimitOpt = Annotated[
    str | None,
    typer.Option(
        "--fold-limit",
        help="Largest tensor constant folding may create, e.g. 512M or 4G "
        "(default max(1G, 2 x the model's weights); env MCONV_FOLD_LIMIT).",
    ),
]


def set_fold_limit(text: str | None) -> None:
    """Validate --fold-limit and hand it to every stage (and child process) via the environment."""
    import os

    from mconv.limits import FOLD_ENV, parse_size

    if text is not None:
        os.environ[FOLD_ENV] = str(parse_size(text, "--fold-limit"))
    elif os.environ.get(FOLD_ENV):
        parse_size(os.environ[FOLD_ENV], f"{FOLD_ENV} (or --fold-limit)")


def export_options(inputs, dynamic, opset, exporter, model, trust_pickle, weights=None, layout=None):
    from mconv.pipeline import ExportOptions
    from mconv.specs import parse_dynamic, parse_input_spec

    return ExportOptions(
        model_spec=model,
        inputs=[parse_input_spec(s) for s in inputs or []],
        dynamic=[parse_dynamic(s) for s in dynamic or []],
        opset=opset,
        exporter=exporter,
        trust_pickle=trust_pickle,
        weights=weights,
        layout=layout,
    )


def image_options(mean: str | None, std: str | None, size: str | None):
    """--mean/--std/--size -> ImageOptions for the shared loader (None when none given)."""
    if not (mean or std or size):
        return None
    from mconv.data import ImageOptions, parse_floats
    from mconv.errors import UsageError
    from mconv.specs import parse_shape

    hw = parse_shape(size, "--size") if size else None
    if hw is not None and len(hw) != 2:
        raise UsageError(f"--size {size}: expected HxW, e.g. 224x224")
    return ImageOptions(
        mean=parse_floats(mean, "--mean") or (0.0, 0.0, 0.0),
        std=parse_floats(std, "--std") or (1.0, 1.0, 1.0),
        size=hw,
    )


def tolerance_of(rtol, atol, min_cos):
    from mconv.errors import UsageError
    from mconv.metrics import Tolerance

    if rtol is None and min_cos is None:
        if atol:
            raise UsageError("--atol needs --rtol")
        return None
    if (rtol is not None and rtol < 0) or (min_cos is not None and not -1 <= min_cos <= 1):
        raise UsageError("--rtol must be >= 0 and --min-cos within [-1, 1]")
    return Tolerance(rtol=rtol, atol=atol or 0.0, min_cos=min_cos)


def emit(report: dict[str, Any], as_json: bool, render) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        render(report)


def console():
    from rich.console import Console

    return Console(highlight=False)


def print_verification(con, report: dict[str, Any]) -> None:
    v = report.get("verification")
    if not v:
        return
    from rich.table import Table

    t = Table(title=f"verification vs {v.get('reference')} ({v.get('tolerance')})", title_justify="left")
    for col in ("output", "shape", "max abs", "rel", "floor", "x floor", "cosine", "top-1", "ok"):
        t.add_column(col)
    for o in v["outputs"]:
        rule = "" if o.get("rule", "elementwise") == "elementwise" else f" by {o['rule']}"
        t.add_row(
            o["name"],
            "x".join(map(str, o["shape"])),
            f"{float(o['max_abs']):.3g}",
            f"{float(o['rel']):.3g}",
            "" if o.get("floor") is None else f"{float(o['floor']):.3g}",
            "" if o.get("ratio") is None else f"{float(o['ratio']):.2g}",
            f"{float(o['cosine']):.6f}",
            "" if o.get("top1") is None else f"{o['top1']:.2f}",
            ("yes" if o["passed"] else f"NO: {o['reason']}") + rule,
        )
    con.print(t)


def print_artifacts(con, report: dict[str, Any]) -> None:
    for w in report.get("warnings") or []:
        con.print(f"[yellow]warning:[/yellow] {w}")
    for a in report.get("artifacts", []):
        con.print(f"wrote {a}")
