"""``mconv export``, ``optimize``, ``build``, ``inspect``, ``targets`` and ``passes``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mconv.cli.app import app
from mconv.cli.common import (
    DynamicOpt,
    ExporterOpt,
    FoldLimitOpt,
    InputOpt,
    JsonOpt,
    LayoutOpt,
    MeanOpt,
    ModelOpt,
    OpsetOpt,
    PassesOpt,
    SizeOpt,
    StdOpt,
    TrustOpt,
    WeightsOpt,
    console,
    emit,
    export_options,
    image_options,
    print_artifacts,
    print_verification,
    set_fold_limit,
    tolerance_of,
)


@app.command()
def export(
    model_path: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="PyTorch (TorchScript, .pt2, state_dict, pickle), Paddle (.json/.pdmodel + .pdiparams), "
            "Keras (.keras, .h5), a SavedModel folder, or a Caffe .prototxt.",
        ),
    ],
    to: Annotated[str, typer.Option("--to", help="Output format (onnx).")] = "onnx",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output .onnx path.")] = None,
    input: InputOpt = None,
    dynamic: DynamicOpt = None,
    opset: OpsetOpt = None,
    exporter: ExporterOpt = "auto",
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    weights: WeightsOpt = None,
    layout: LayoutOpt = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the onnxruntime vs source framework check.")
    ] = False,
    rtol: Annotated[float | None, typer.Option("--rtol", help="Relative tolerance (default 1e-4).")] = None,
    keep_failed: Annotated[bool, typer.Option("--keep-failed", help="Write the ONNX even if it fails.")] = False,
    as_json: JsonOpt = False,
):
    """Export a PyTorch, PaddlePaddle, TensorFlow/Keras or Caffe model to ONNX and verify it
    against its own framework with onnxruntime."""
    from mconv import api
    from mconv.errors import UsageError

    if to != "onnx":
        raise UsageError(f"--to {to}: only 'onnx' is supported; use `mconv build --target ...` for backends")
    result = api.export(
        model_path, output, inputs=input, dynamic=dynamic, opset=opset, exporter=exporter, model_spec=model,
        trust_pickle=trust_pickle, weights=weights, layout=layout, verify=not no_verify,
        tolerance=tolerance_of(rtol, None, None), keep_failed=keep_failed,
    )  # fmt: skip
    report = result.to_json()

    def render(r):
        con = console()
        con.print(f"exported {r['source']} with the {r['exporter']} exporter: opset {r['opset']}, {r['nodes']} nodes")
        print_verification(con, r)
        print_artifacts(con, r)

    emit(report, as_json, render)


@app.command()
def optimize(
    model_path: Annotated[Path, typer.Argument(metavar="IN.onnx")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output .onnx path.")] = None,
    passes: PassesOpt = None,
    fold_limit: FoldLimitOpt = None,
    as_json: JsonOpt = False,
):
    """Run the ONNX pass pipeline (shape inference, folding, simplification, fusions)."""
    from mconv import api
    from mconv.passes import parse_pass_list

    set_fold_limit(fold_limit)
    report = api.optimize(model_path, output, passes=parse_pass_list(passes)).to_json()

    def render(r):
        from rich.table import Table

        t = Table(title=f"{r['source']}: {r['nodes_before']} -> {r['nodes_after']} nodes", title_justify="left")
        for col in ("pass", "nodes before", "nodes after", "seconds", "notes"):
            t.add_column(col)
        for p in r["passes"]:
            t.add_row(
                p["pass"], str(p["nodes_before"]), str(p["nodes_after"]), f"{p['seconds']:.3f}", "; ".join(p["notes"])
            )
        con = console()
        con.print(t)
        print_artifacts(con, r)

    emit(report, as_json, render)


OutputDirOpt = Annotated[Path | None, typer.Option("-o", "--output", help="Output folder (default <stem>_<target>/).")]
CalibOpt = Annotated[str | None, typer.Option("--calib", help="Calibration data: folder/glob of .npy/.npz/images.")]
CalibCountOpt = Annotated[int, typer.Option("--calib-count", help="Calibration samples to use.")]
VerifyInputsOpt = Annotated[str | None, typer.Option("--inputs", help="Verification samples (.npy/.npz/images).")]
BatchOpt = Annotated[int | None, typer.Option("--batch", help="Fix the first axis of every input.")]
TargetOptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--option",
        "-O",
        metavar="KEY=VALUE",
        help="A target option (repeatable); the target options are listed below and by `mconv targets NAME`.",
    ),
]
NoVerifyOpt = Annotated[bool, typer.Option("--no-verify", help="Skip verification against onnxruntime.")]
RtolOpt = Annotated[float | None, typer.Option("--rtol", help="Relative tolerance (overrides the default).")]
AtolOpt = Annotated[float | None, typer.Option("--atol", help="Absolute tolerance added to --rtol.")]
MinCosOpt = Annotated[float | None, typer.Option("--min-cos", help="Minimum cosine similarity.")]
KeepFailedOpt = Annotated[bool, typer.Option("--keep-failed", help="Keep artifacts that fail verification.")]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        help="Seconds the verification runners may take before the build fails (exit 1); "
        "default 120 + 60 per GiB of weights + 0.02 per node.",
    ),
]


@app.command()
def build(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="ONNX or any source `mconv export` reads.")],
    target: Annotated[
        str,
        typer.Option(
            "--target",
            "-t",
            help="A registered target (see `mconv targets`), or several separated by commas "
            "(one export and pass pipeline, then each target into -o DIR/<target>/).",
        ),
    ],
    output: OutputDirOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 weights.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 quantization (needs --calib).")] = False,
    calib: CalibOpt = None,
    calib_count: CalibCountOpt = 300,
    mean: MeanOpt = None,
    std: StdOpt = None,
    size: SizeOpt = None,
    inputs_data: VerifyInputsOpt = None,
    input: InputOpt = None,
    dynamic: DynamicOpt = None,
    batch: BatchOpt = None,
    option: TargetOptionOpt = None,
    passes: PassesOpt = None,
    opset: OpsetOpt = None,
    exporter: ExporterOpt = "auto",
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    weights: WeightsOpt = None,
    layout: LayoutOpt = None,
    no_verify: NoVerifyOpt = False,
    rtol: RtolOpt = None,
    atol: AtolOpt = None,
    min_cos: MinCosOpt = None,
    keep_failed: KeepFailedOpt = False,
    fold_limit: FoldLimitOpt = None,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
):
    """Build a target artifact from ONNX or any source `mconv export` reads, then verify it
    against onnxruntime."""
    from mconv import api
    from mconv.passes import parse_pass_list
    from mconv.targets.options import parse_assignments

    precision = _build_precision(fp16, int8, calib_count, batch, timeout)
    set_fold_limit(fold_limit)
    names = [t.strip() for t in target.split(",")] if "," in target else target
    result = api.build(
        model_path, names, output, precision=precision, calib=calib, calib_count=calib_count,
        options=parse_assignments(option), inputs=input, dynamic=dynamic, batch=batch,
        passes=parse_pass_list(passes), opset=opset, exporter=exporter, model_spec=model, trust_pickle=trust_pickle,
        weights=weights, layout=layout, verify=not no_verify, verify_inputs=inputs_data,
        tolerance=tolerance_of(rtol, atol, min_cos), keep_failed=keep_failed, timeout=timeout,
        image=image_options(mean, std, size),
    )  # fmt: skip

    def render(r):
        con = console()
        con.print(f"built {r['target']} ({r['precision']}) from {r['source']} in {r['seconds']:.1f} s")
        print_verification(con, r)
        print_artifacts(con, r)

    if not isinstance(names, str):
        return _multi_build_done(result, as_json)
    emit(result.to_json(), as_json, render)


def _multi_build_done(result, as_json: bool) -> None:
    """Render a multi-target build; failed targets make it an error with the worst exit code."""
    from mconv.errors import MconvError

    report = result.to_json()
    if not as_json:
        _print_multi(report)
    if result.failures:
        bad = "; ".join(f"{f.target}: {f.error}" for f in result.failures)
        raise MconvError(f"{len(result.failures)} of {len(result.outcomes)} target(s) failed: {bad}",
                         exit_code=result.exit_code, report=report)  # fmt: skip
    if as_json:
        emit(report, as_json, None)


def _print_multi(r) -> None:
    """One line per target, one verification table for all of them, the artifacts."""
    from rich.table import Table

    con = console()
    t = Table(title=f"verification vs onnxruntime ({r['precision']})", title_justify="left")
    for col in ("target", "output", "max abs", "rel", "cosine", "tolerance", "ok"):
        t.add_column(col)
    for tr in r["targets"]:
        v = tr.get("verification") or {}
        for o in v.get("outputs", []):
            ok = "yes" if o["passed"] else f"NO: {o.get('reason', '')}"
            t.add_row(tr["target"], o["name"], f"{float(o['max_abs']):.3g}", f"{float(o['rel']):.3g}",
                      f"{float(o['cosine']):.6f}", v.get("tolerance"), ok)  # fmt: skip
    for tr in r["targets"]:
        if tr["status"] == "ok":
            con.print(f"built {tr['target']} ({r['precision']}) from {r['source']} in {tr['seconds']:.1f} s")
        else:
            con.print(f"[red]failed[/red] {tr['target']}: {tr['error']}")
    if t.row_count:
        con.print(t)
    for tr in r["targets"]:
        print_artifacts(con, tr)


def _build_precision(fp16: bool, int8: bool, calib_count: int, batch: int | None, timeout: float | None) -> str:
    """The precision the flags ask for; flag values checked (usage errors)."""
    from mconv.errors import UsageError

    if fp16 and int8:
        raise UsageError("--fp16 and --int8 are exclusive; pick one precision")
    if calib_count <= 0:
        raise UsageError("--calib-count must be >= 1")
    if batch is not None and batch <= 0:
        raise UsageError("--batch must be >= 1")
    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    return "int8" if int8 else "fp16" if fp16 else "fp32"


@app.command()
def inspect(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="Check one target only.")] = None,
    input: InputOpt = None,
    model: ModelOpt = None,
    trust_pickle: TrustOpt = False,
    weights: WeightsOpt = None,
    layout: LayoutOpt = None,
    fold_limit: FoldLimitOpt = None,
    as_json: JsonOpt = False,
):
    """Inputs, outputs, opset, op histogram, parameters, and what each target cannot lower;
    for an artifact (.param, .xml, .mnn, .tflite, ...): its target, precision, files, inputs,
    outputs (and ncnn's layer types)."""
    from mconv.pipeline import inspect_model

    set_fold_limit(fold_limit)
    opts = export_options(input, None, None, "auto", model, trust_pickle, weights, layout)
    report = inspect_model(model_path, target, opts)

    def io_table(r):
        from rich.table import Table

        t = Table(title="inputs / outputs", title_justify="left")
        for col in ("kind", "name", "shape", "dtype"):
            t.add_column(col)
        for kind in ("inputs", "outputs"):
            for i in r[kind] or []:
                shape = "?" if i["shape"] is None else "x".join("?" if d is None else str(d) for d in i["shape"])
                t.add_row(kind[:-1], i["name"], shape, i["dtype"])
        return t

    def render_artifact(r):
        con = console()
        size = sum(f["bytes"] for f in r["files"])
        files = f"{len(r['files'])} files, {size / 1e6:.1f} MB"
        con.print(f"{r['artifact']}: {r['target']} artifact ({r['precision']}), {files}")
        if r["inputs"] is None and r["outputs"] is None:
            con.print("inputs / outputs: not recorded beside it")
        else:
            con.print(io_table(r))
        if r.get("layers"):
            con.print("layers: " + ", ".join(f"{k} {v}" for k, v in r["layers"].items()))

    def render(r):
        if "artifact" in r:
            render_artifact(r)
            return
        con = console()
        con.print(
            f"{r['source']}: opset {r['opset']}, {r['nodes']} nodes, {r['parameters']:,} parameters "
            f"({r['parameter_bytes'] / 1e6:.1f} MB)"
        )
        con.print(io_table(r))
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

    emit(report, as_json, render)


@app.command("targets")
def targets_cmd(
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="Show one target and its options.")] = None,
    as_json: JsonOpt = False,
):
    """List registered targets (built-in and plugins) and whether their runtime is installed;
    with NAME, that target's options too."""
    from mconv.targets import all_targets, find_entry

    if name is not None:
        _target_detail(find_entry(name), as_json)
        return
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
        from rich.markup import escape
        from rich.table import Table

        t = Table()
        for col in ("target", "source", "precisions", "runtime", "description"):
            t.add_column(col)
        for row in r["targets"]:
            if row.get("error"):
                t.add_row(row["name"], row["source"], "", f"[red]failed to load: {row['error']}[/red]", "")
            else:
                t.add_row(
                    row["name"], row["source"], ",".join(row["precisions"]), escape(row["runtime"]), row["description"]
                )
        console().print(t)

    emit(report, as_json, render)


def _target_detail(entry, as_json: bool) -> None:
    """``mconv targets NAME``: one target, its runtime and its declared options."""
    cls = entry.load()
    report = {
        "command": "targets",
        "name": entry.name,
        "source": entry.source,
        "description": cls.description,
        "aliases": list(cls.aliases),
        "precisions": list(cls.precisions),
        "runtime": cls().missing_runtime_message() or "available",
        "options": [s.to_json() for s in cls.Options.specs()],
    }

    def render(r):
        con = console()
        con.print(f"{r['name']} ({r['source']}): {r['description']}", markup=False)
        con.print(f"precisions: {', '.join(r['precisions'])}; runtime: {r['runtime']}", markup=False)
        if not r["options"]:
            con.print("no target options")
            return
        con.print("options (--option KEY=VALUE, or the flag; in recipes: targets[].options.KEY):")
        for o in r["options"]:
            flag = f", {o['flag']}" if o["flag"] else ""
            only = "" if len(o["precisions"]) == 3 else f", {'/'.join(o['precisions'])} only"
            con.print(f"  {o['name']}{flag} ({o['type']}, default {o['default']!r}{only})", markup=False)
            choices = f" Choices: {', '.join(o['choices'])}." if o["choices"] else ""
            con.print(f"      {o['help']}{choices}", markup=False)

    emit(report, as_json, render)


@app.command("sources")
def sources_cmd(as_json: JsonOpt = False):
    """List registered sources (built-in and plugins) in detection order, with the pip extra
    each framework comes from; a plugin that fails to load is listed with its error."""
    from mconv.convert import all_sources

    rows = []
    for e in all_sources():
        row = {"name": e.name, "source": e.origin, "error": e.error}
        if not e.error:
            try:
                src = e.load()
                row.update(framework=src.framework, extra=src.extra, description=src.description)
            except Exception as ex:  # a plugin that breaks at load shows here, not as a crash
                row["error"] = f"{type(ex).__name__}: {ex}"
        rows.append(row)
    report = {"command": "sources", "sources": rows}

    def render(r):
        from rich.markup import escape
        from rich.table import Table

        t = Table()
        for col in ("source", "from", "framework", "extra", "description"):
            t.add_column(col)
        for row in r["sources"]:
            if row.get("error"):
                t.add_row(row["name"], row["source"], f"[red]failed to load: {escape(row['error'])}[/red]", "", "")
            else:
                extra = f"mconv[{row['extra']}]" if row["extra"] else ""
                t.add_row(row["name"], row["source"], row["framework"], escape(extra), escape(row["description"]))
        console().print(t)

    emit(report, as_json, render)


@app.command("passes")
def passes_cmd(as_json: JsonOpt = False):
    """List registered passes and the default pipeline."""
    from mconv.passes import DEFAULT_PIPELINE, all_passes

    report = {"command": "passes", "passes": all_passes(), "default_pipeline": list(DEFAULT_PIPELINE)}

    def render(r):
        con = console()
        for name, doc in r["passes"].items():
            con.print(f"{name:24s} {doc}")
        con.print("default pipeline: " + " -> ".join(r["default_pipeline"]))

    emit(report, as_json, render)
