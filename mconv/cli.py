"""The ``mconv`` command line: parse, call one library function, print.

Errors from the library are ``MconvError`` subclasses; they are printed as one
line on stderr with their exit code (0 ok, 1 conversion error, 2 usage or input
error, 3 verification failed). ``--debug`` anywhere on the line shows tracebacks;
``--verbose`` (or ``--debug``) lets third-party runtimes' own log lines through.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="mconv",
    help="Convert PyTorch and ONNX models to ONNX, ncnn, OpenVINO and TensorRT, verified by the real runtimes.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state: dict[str, Any] = {"debug": False}

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


def _set_fold_limit(text: str | None) -> None:
    """Validate --fold-limit and hand it to every stage (and child process) via the environment."""
    import os

    from mconv.limits import FOLD_ENV, parse_size

    if text is not None:
        os.environ[FOLD_ENV] = str(parse_size(text, "--fold-limit"))
    elif os.environ.get(FOLD_ENV):
        parse_size(os.environ[FOLD_ENV], f"{FOLD_ENV} (or --fold-limit)")


def _export_options(inputs, dynamic, opset, exporter, model, trust_pickle):
    from mconv.pipeline import ExportOptions
    from mconv.specs import parse_dynamic, parse_input_spec

    return ExportOptions(
        model_spec=model,
        inputs=[parse_input_spec(s) for s in inputs or []],
        dynamic=[parse_dynamic(s) for s in dynamic or []],
        opset=opset,
        exporter=exporter,
        trust_pickle=trust_pickle,
    )


def _image_options(mean: str | None, std: str | None, size: str | None):
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


def _tolerance(rtol, atol, min_cos):
    from mconv.errors import UsageError
    from mconv.metrics import Tolerance

    if rtol is None and min_cos is None:
        if atol:
            raise UsageError("--atol needs --rtol")
        return None
    if (rtol is not None and rtol < 0) or (min_cos is not None and not -1 <= min_cos <= 1):
        raise UsageError("--rtol must be >= 0 and --min-cos within [-1, 1]")
    return Tolerance(rtol=rtol, atol=atol or 0.0, min_cos=min_cos)


def _emit(report: dict[str, Any], as_json: bool, render) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        render(report)


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _print_verification(con, report: dict[str, Any]) -> None:
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


def _print_artifacts(con, report: dict[str, Any]) -> None:
    for w in report.get("warnings") or []:
        con.print(f"[yellow]warning:[/yellow] {w}")
    for a in report.get("artifacts", []):
        con.print(f"wrote {a}")


# ---- commands -------------------------------------------------------------------------------
@app.command()
def export(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="TorchScript, .pt2, state_dict or pickle.")],
    to: Annotated[str, typer.Option("--to", help="Output format (onnx).")] = "onnx",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output .onnx path.")] = None,
    input: InputOpt = None,
    dynamic: DynamicOpt = None,
    opset: OpsetOpt = None,
    exporter: ExporterOpt = "auto",
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the onnxruntime vs PyTorch check.")] = False,
    rtol: Annotated[float | None, typer.Option("--rtol", help="Relative tolerance (default 1e-4).")] = None,
    keep_failed: Annotated[bool, typer.Option("--keep-failed", help="Write the ONNX even if it fails.")] = False,
    as_json: JsonOpt = False,
):
    """Export a PyTorch model to ONNX and verify it against PyTorch with onnxruntime."""
    from mconv.errors import UsageError
    from mconv.pipeline import VerifyOptions, export_model

    if to != "onnx":
        raise UsageError(f"--to {to}: only 'onnx' is supported; use `mconv build --target ...` for backends")
    opts = _export_options(input, dynamic, opset, exporter, model, trust_pickle)
    verify = VerifyOptions(enabled=not no_verify, tolerance=_tolerance(rtol, None, None), keep_failed=keep_failed)
    report = export_model(model_path, output, opts, verify)

    def render(r):
        con = _console()
        con.print(f"exported {r['source']} with the {r['exporter']} exporter: opset {r['opset']}, {r['nodes']} nodes")
        _print_verification(con, r)
        _print_artifacts(con, r)

    _emit(report, as_json, render)


@app.command()
def optimize(
    model_path: Annotated[Path, typer.Argument(metavar="IN.onnx")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output .onnx path.")] = None,
    passes: PassesOpt = None,
    fold_limit: FoldLimitOpt = None,
    as_json: JsonOpt = False,
):
    """Run the ONNX pass pipeline (shape inference, folding, simplification, fusions)."""
    from mconv.passes import parse_pass_list
    from mconv.pipeline import optimize_model

    _set_fold_limit(fold_limit)

    report = optimize_model(model_path, output, parse_pass_list(passes))

    def render(r):
        from rich.table import Table

        t = Table(title=f"{r['source']}: {r['nodes_before']} -> {r['nodes_after']} nodes", title_justify="left")
        for col in ("pass", "nodes before", "nodes after", "seconds", "notes"):
            t.add_column(col)
        for p in r["passes"]:
            t.add_row(
                p["pass"], str(p["nodes_before"]), str(p["nodes_after"]), f"{p['seconds']:.3f}", "; ".join(p["notes"])
            )
        con = _console()
        con.print(t)
        _print_artifacts(con, r)

    _emit(report, as_json, render)


@app.command()
def build(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="ONNX or any PyTorch source.")],
    target: Annotated[str, typer.Option("--target", "-t", help="onnx | ncnn | openvino | trt (see `mconv targets`).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Output folder (default <stem>_<target>/).")
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 weights.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 quantization (needs --calib).")] = False,
    calib: Annotated[
        str | None, typer.Option("--calib", help="Calibration data: folder/glob of .npy/.npz/images.")
    ] = None,
    calib_count: Annotated[int, typer.Option("--calib-count", help="Calibration samples to use.")] = 300,
    calib_method: Annotated[
        str | None, typer.Option("--calib-method", help="kl | minmax | entropy | percentile.")
    ] = None,
    int8_preset: Annotated[str | None, typer.Option("--int8-preset", help="performance | mixed (OpenVINO).")] = None,
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Node name or op type kept in float.")] = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    size: SizeOpt = None,
    inputs_data: Annotated[
        str | None, typer.Option("--inputs", help="Verification samples (.npy/.npz/images).")
    ] = None,
    input: InputOpt = None,
    dynamic: DynamicOpt = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Fix the first axis of every input.")] = None,
    shape: Annotated[list[str] | None, typer.Option("--shape", help="TensorRT profile NAME:MIN:OPT:MAX.")] = None,
    workspace: Annotated[str | None, typer.Option("--workspace", help="TensorRT workspace, e.g. 2G.")] = None,
    timing_cache: Annotated[Path | None, typer.Option("--timing-cache", help="TensorRT timing cache file.")] = None,
    passes: PassesOpt = None,
    opset: OpsetOpt = None,
    exporter: ExporterOpt = "auto",
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip verification against onnxruntime.")] = False,
    rtol: Annotated[float | None, typer.Option("--rtol", help="Relative tolerance (overrides the default).")] = None,
    atol: Annotated[float | None, typer.Option("--atol", help="Absolute tolerance added to --rtol.")] = None,
    min_cos: Annotated[float | None, typer.Option("--min-cos", help="Minimum cosine similarity.")] = None,
    keep_failed: Annotated[bool, typer.Option("--keep-failed", help="Keep artifacts that fail verification.")] = False,
    fold_limit: FoldLimitOpt = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Seconds the verification runners may take before the build fails (exit 1); "
            "default 120 + 60 per GiB of weights + 0.02 per node.",
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """Build a target artifact from ONNX or PyTorch, then verify it against onnxruntime."""
    from mconv.errors import UsageError
    from mconv.passes import parse_pass_list
    from mconv.pipeline import BuildRequest, VerifyOptions, build_model
    from mconv.specs import parse_profile, parse_size

    if fp16 and int8:
        raise UsageError("--fp16 and --int8 are exclusive; pick one precision")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    if calib_count <= 0:
        raise UsageError("--calib-count must be >= 1")
    if batch is not None and batch <= 0:
        raise UsageError("--batch must be >= 1")
    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    _set_fold_limit(fold_limit)
    image = _image_options(mean, std, size)
    extra: dict[str, Any] = {
        "calib_method": calib_method,
        "int8_preset": int8_preset,
        "ignore": list(ignore or []),
        "profiles": [[parse_profile(s) for s in shape]] if shape else [],
        "workspace": parse_size(workspace) if workspace else None,
        "timing_cache": str(timing_cache) if timing_cache else None,
    }
    req = BuildRequest(
        path=model_path,
        target=target,
        out_dir=output,
        precision=precision,
        calib=calib,
        calib_count=calib_count,
        image=image,
        passes=parse_pass_list(passes),
        export=_export_options(input, dynamic, opset, exporter, model, trust_pickle),
        verify=VerifyOptions(
            enabled=not no_verify,
            inputs=inputs_data,
            tolerance=_tolerance(rtol, atol, min_cos),
            keep_failed=keep_failed,
            timeout=timeout,
        ),
        batch=batch,
        extra=extra,
    )
    report = build_model(req)

    def render(r):
        con = _console()
        con.print(f"built {r['target']} ({r['precision']}) from {r['source']} in {r['seconds']:.1f} s")
        _print_verification(con, r)
        _print_artifacts(con, r)

    _emit(report, as_json, render)


@app.command()
def inspect(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="Check one target only.")] = None,
    input: InputOpt = None,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    fold_limit: FoldLimitOpt = None,
    as_json: JsonOpt = False,
):
    """Inputs, outputs, opset, op histogram, parameters, and what each target cannot lower."""
    from mconv.pipeline import inspect_model

    _set_fold_limit(fold_limit)
    report = inspect_model(model_path, target, _export_options(input, None, None, "auto", model, trust_pickle))

    def render(r):
        from rich.table import Table

        con = _console()
        con.print(
            f"{r['source']}: opset {r['opset']}, {r['nodes']} nodes, {r['parameters']:,} parameters "
            f"({r['parameter_bytes'] / 1e6:.1f} MB)"
        )
        t = Table(title="inputs / outputs", title_justify="left")
        for col in ("kind", "name", "shape", "dtype"):
            t.add_column(col)
        for kind in ("inputs", "outputs"):
            for i in r[kind]:
                shape = "?" if i["shape"] is None else "x".join("?" if d is None else str(d) for d in i["shape"])
                t.add_row(kind[:-1], i["name"], shape, i["dtype"])
        con.print(t)
        con.print("ops: " + ", ".join(f"{k} {v}" for k, v in r["ops"].items()))
        for name, e in r["targets"].items():
            if "error" in e:
                con.print(f"target {name}: [red]{e['error']}[/red]")
                continue
            un = e["unsupported"]
            status = (
                "all ops supported"
                if not un
                else "cannot lower " + ", ".join(f"{op} x{len(n)} ({', '.join(n[:3])})" for op, n in un.items())
            )
            con.print(f"target {name} (runtime: {e['runtime']}): {status}")
            for f in e.get("findings", []):
                con.print(f"  {f.get('severity', '')}: {f.get('message', '')}")

    _emit(report, as_json, render)


@app.command("targets")
def targets_cmd(as_json: JsonOpt = False):
    """List registered targets (built-in and plugins) and whether their runtime is installed."""
    from mconv.targets import all_targets

    rows = []
    for e in all_targets():
        row = {"name": e.name, "source": e.source, "error": e.error}
        if not e.error:
            try:
                cls = e.load()
                t = cls()
                row.update(
                    description=cls.description,
                    extra=cls.extra,
                    aliases=list(cls.aliases),
                    precisions=list(cls.precisions),
                    runtime=t.runtime_missing() or "available",
                )
            except Exception as ex:  # a plugin that breaks at load shows here, not as a crash
                row["error"] = f"{type(ex).__name__}: {ex}"
        rows.append(row)
    report = {"command": "targets", "targets": rows}

    def render(r):
        from rich.table import Table

        t = Table()
        for col in ("target", "source", "precisions", "runtime", "description"):
            t.add_column(col)
        for row in r["targets"]:
            if row.get("error"):
                t.add_row(row["name"], row["source"], "", f"[red]failed to load: {row['error']}[/red]", "")
            else:
                t.add_row(row["name"], row["source"], ",".join(row["precisions"]), row["runtime"], row["description"])
        _console().print(t)

    _emit(report, as_json, render)


@app.command("passes")
def passes_cmd(as_json: JsonOpt = False):
    """List registered passes and the default pipeline."""
    from mconv.passes import DEFAULT_PIPELINE, all_passes

    report = {"command": "passes", "passes": all_passes(), "default_pipeline": list(DEFAULT_PIPELINE)}

    def render(r):
        con = _console()
        for name, doc in r["passes"].items():
            con.print(f"{name:24s} {doc}")
        con.print("default pipeline: " + " -> ".join(r["default_pipeline"]))

    _emit(report, as_json, render)


# Commands defined in their own modules register themselves on ``app`` when imported.
from mconv import cli_run, cli_verify  # noqa: E402, F401


# ---- entry point ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Console-script entry: run the app, map errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args or "--verbose" in args:
        # Third-party logs (onnxruntime, onnxsim, OpenVINO, ...) reach stderr only then.
        import os

        from mconv.quiet import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    if "--verbose" in args:
        args = [a for a in args if a != "--verbose"]
    if "--debug" in args:
        args = [a for a in args if a != "--debug"]
        _state["debug"] = True
    as_json = "--json" in args
    from mconv.fsutil import cleanup_temporaries

    try:
        app(args=args, prog_name="mconv", standalone_mode=False)
        return 0
    except SystemExit as e:  # typer/click exits
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except KeyboardInterrupt:
        cleanup_temporaries()
        _fail("interrupted", 130, as_json)
        return 130
    except Exception as e:
        return _handle_error(e, as_json)


def _handle_error(e: Exception, as_json: bool) -> int:
    """Print one line for ``e`` (the traceback too with --debug) and return its exit code."""
    from mconv.errors import MconvError
    from mconv.fsutil import cleanup_temporaries

    cleanup_temporaries()
    if _state["debug"]:
        import traceback

        traceback.print_exception(e)
    if isinstance(e, MconvError):
        _fail(e.message, e.exit_code, as_json, e.report)
        return e.exit_code
    if isinstance(e, typer.Abort):
        _fail("aborted", 130, as_json)
        return 130
    cx = _click_exceptions()
    if type(e).__name__ == "NoArgsIsHelpError":
        sys.stderr.write(e.format_message() + "\n")
        return 2
    if isinstance(e, cx.UsageError):
        msg = e.format_message()
        if e.ctx is not None:
            msg = f"{msg} (see `{e.ctx.command_path} --help`)"
        _fail(msg, 2, as_json)
        return 2
    if isinstance(e, cx.ClickException):
        _fail(e.format_message(), 2, as_json)
        return 2
    _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback, and report it)", 1, as_json)
    return 1


def _click_exceptions():
    try:
        import click.exceptions as cx
    except ImportError:  # typer >= 0.20 vendors click
        from typer._click import exceptions as cx
    return cx


def _fail(message: str, code: int, as_json: bool, report: Any = None) -> None:
    sys.stderr.write(f"mconv: error: {message}\n")
    if as_json:
        obj: dict[str, Any] = {"ok": False, "exit_code": code, "error": message}
        if isinstance(report, dict):
            obj["report"] = report
        sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def entry() -> None:
    """The console script: SIGINT/SIGTERM remove partial files and exit 130/143."""
    from mconv.fsutil import install_signal_cleanup

    install_signal_cleanup()  # here, not in main(): in-process callers keep their own handlers
    sys.exit(main())


if __name__ == "__main__":
    entry()
