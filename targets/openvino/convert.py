"""OpenVINO target: ONNX -> OpenVINO IR (``<stem>.xml`` + ``<stem>.bin``).

The heavy lifting is OpenVINO's own: ``openvino.convert_model`` reads the ONNX
model, ``openvino.save_model`` writes the IR (``compress_to_fp16`` only for
``--fp16``; it compresses by default, so FP32 passes ``False`` explicitly) and
``nncf.quantize`` does INT8 post-training quantization. What this module adds is
the pipeline around them:

* input shapes: dynamic dims are kept unless ``--input NAME:SHAPE`` or
  ``--batch N`` fixes them;
* ``--ignore NODE_OR_TYPE`` resolved against ONNX node names, ONNX op types,
  OpenVINO op types and OpenVINO friendly names (NNCF only knows the last two);
* frontend failures reshaped into op type + node name errors (exit 1);
* deterministic output: OpenVINO names nodes it creates from a process-wide
  counter (``Constant_161282``), so those names are renumbered in graph order
  before saving and the same input gives byte-identical files;
* a runner on the CPU plugin with an FP32 inference-precision hint, so that FP32
  and FP16-weight IRs are compared with onnxruntime at FP32 (this CPU would
  otherwise pick BF16 where it has AVX512-BF16/AMX).

The target's options are :class:`OpenVinoOptions` (``int8_preset``, ``int8_model_type``,
``ignore``); the build-wide ``input_shapes``, ``batch`` and ``calib_count_requested``
come from :class:`BuildOptions`.

Warnings: :func:`int8_warnings` (also returned by ``preflight``) and, after writing,
``artifact.meta["warnings"]`` hold the same lines; print one of them, not both.

openvino and nncf are imported inside functions: ``import mconv`` stays light.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mconv.data import calibration_warnings
from mconv.errors import (
    ConversionError,
    MissingDependencyError,
    UnsupportedOpsError,
    UsageError,
)
from mconv.graphinfo import all_graphs, all_nodes
from mconv.targets.base import PRECISIONS, BuildOptions, Feeds, TargetOptions, ignore_option, option

CALIB_COUNT_DEFAULT = 300  # the CLI's --calib-count default

INT8_PRESETS = ("performance", "mixed")


@dataclass
class OpenVinoOptions(TargetOptions):
    int8_preset: str | None = option(
        None,
        help="NNCF preset: performance (symmetric) or mixed (asymmetric activations); "
        "default mixed for graphs with attention, else performance.",
        choices=INT8_PRESETS,
        precisions=("int8",),
        flag="--int8-preset",
        metavar="PRESET",
    )
    int8_model_type: str | None = option(
        None,
        help="NNCF model type: transformer (SmoothQuant, transformer-aware scopes) or default; "
        "default: transformer when the graph has attention.",
        choices=("transformer", "default"),
        precisions=("int8",),
    )
    ignore: list[str] = ignore_option()


# protobuf cannot serialise 2 GiB or more; bigger models go through a file.

# A name OpenVINO made up from its global counter: "Constant_161282", "Reshape_3318".
_AUTO_NAME = re.compile(r"(?<![\w.])([A-Z][A-Za-z0-9]*)_(\d+)(?![\w])")


def import_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise MissingDependencyError("openvino", "openvino", str(e)) from e
    return ov


def _import_nncf():
    try:
        import nncf
    except ImportError as e:
        raise MissingDependencyError("nncf (INT8 quantization for OpenVINO)", "openvino", str(e)) from e
    nncf.set_log_level(logging.ERROR)
    return nncf


# ---------------------------------------------------------------------------
# Options and warnings


def int8_warnings(options: BuildOptions) -> list[str]:
    """Warnings about the calibration set the pipeline should show the user.

    Cases: fewer samples were found than ``--calib-count`` asked for; fewer than
    100 samples are used at all (scales from few samples are noisy).
    """
    if options.precision != "int8" or not options.calib:
        return []
    return calibration_warnings(len(options.calib), options.calib_count_requested)


def check_options(options: BuildOptions) -> None:
    """Raise UsageError for option combinations this target cannot honour."""
    if options.precision not in PRECISIONS:
        raise UsageError(
            f"precision '{options.precision}' is not supported by --target openvino; "
            "use the default (fp32), --fp16 or --int8"
        )
    opts = options.target
    if options.precision == "int8" and not options.calib:
        raise UsageError(
            "--int8 needs calibration data: add --calib DATA (a folder or glob of .npy/.npz files, or images)"
        )
    preset = opts.int8_preset or "performance"
    if preset not in INT8_PRESETS:
        raise UsageError(f"--int8-preset '{preset}': choose one of {', '.join(INT8_PRESETS)}")
    model_type = opts.int8_model_type
    if model_type not in (None, "transformer", "default"):
        raise UsageError(f"int8_model_type '{model_type}': choose 'transformer' or 'default' (unset: by the graph)")
    batch = options.batch
    if batch is not None and int(batch) < 1:
        raise UsageError(f"--batch {batch}: the batch size must be >= 1")


# ---------------------------------------------------------------------------
# Conversion helpers


def onnx_names(model: onnx.ModelProto) -> set[str]:
    """Every node and value name in the graph (these names are the user's, never renamed)."""
    names: set[str] = set()
    for graph in all_graphs(model.graph):
        names.update(t.name for t in graph.initializer)
        names.update(v.name for v in graph.input)
        names.update(v.name for v in graph.output)
        for node in graph.node:
            names.add(node.name)
            names.update(node.input)
            names.update(node.output)
    names.discard("")
    return names


def _onnx_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return all_nodes(model.graph)


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or (node.output[0] if node.output else f"{node.op_type}_{index}")


def _conversion_error(model: onnx.ModelProto, exc: Exception) -> ConversionError:
    """Reshape an OpenVINO frontend failure into op types and node names.

    The frontend's summary lists ops as ``domain.OpType`` (or ``OpType``) after
    "No conversion rule found for operations:" or "Conversion is failed for:".
    """
    text = str(exc)
    listed: list[str] = []
    for line in text.splitlines():
        m = re.search(r"(?:No conversion rule found for operations|Conversion is failed for):\s*(.*)", line)
        if m:
            listed += [t.strip() for t in m.group(1).split(",") if t.strip()]
    ops: dict[str, list[str]] = {}
    for i, node in enumerate(_onnx_nodes(model)):
        dotted = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if any(tok == dotted or tok.split(":")[0].strip() == dotted for tok in listed):
            ops.setdefault(_op_key(node), []).append(_node_label(node, i))
    if ops:
        return UnsupportedOpsError("openvino", ops)
    summary = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Check ")]
    detail = " ".join(summary[:4])[:400] or type(exc).__name__
    return ConversionError(f"OpenVINO could not convert the model: {detail}. Nothing was written.")


def convert_onnx(model: onnx.ModelProto) -> Any:
    """ONNX ModelProto -> ``openvino.Model`` through OpenVINO's ONNX frontend."""
    ov = import_openvino()
    from mconv.modelio import EXTERNAL_THRESHOLD, model_nbytes, save_onnx

    try:
        if model_nbytes(model) < EXTERNAL_THRESHOLD:
            return ov.convert_model(io.BytesIO(model.SerializeToString()))
        # Over protobuf's 2 GiB: through a file with external data. The frontend maps the
        # weights file, which stays readable after the folder is removed (Linux unlink
        # semantics); keep=False moves the weights to disk instead of copying them.
        with tempfile.TemporaryDirectory(prefix="mconv-ov-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_onnx(model, path, external=True, keep=False)
            return ov.convert_model(str(path))
    except Exception as e:
        raise _conversion_error(model, e) from e


def apply_shapes(
    ov_model: Any,
    input_shapes: dict[str, tuple[int, ...]] | None,
    batch: int | None,
) -> None:
    """Fix input shapes in place: ``--input NAME:SHAPE`` wins, ``--batch N`` sets axis 0
    of every other input; all other dims keep what the model declares (dynamic stays
    dynamic)."""
    ov = import_openvino()
    input_shapes = dict(input_shapes or {})
    ports = {}
    for port in ov_model.inputs:
        for n in port.get_names():
            ports[n] = port
    unknown = sorted(set(input_shapes) - set(ports))
    if unknown:
        known = [p.get_any_name() for p in ov_model.inputs]
        raise UsageError(f"--input {unknown[0]}: the model has no input of that name; its inputs are {known}")
    if not input_shapes and batch is None:
        return
    new: dict[Any, Any] = {}
    for port in ov_model.inputs:
        name = next((n for n in port.get_names() if n in input_shapes), None)
        old = port.get_partial_shape()
        if name is not None:
            shape = input_shapes[name]
            if old.rank.is_static and old.rank.get_length() != len(shape):
                raise UsageError(
                    f"--input {name}:{'x'.join(map(str, shape))}: the input has rank "
                    f"{old.rank.get_length()} ({old}), not {len(shape)}"
                )
            new[port] = ov.PartialShape(list(shape))
        elif batch is not None and old.rank.is_static and old.rank.get_length() >= 1:
            dims = [old[i] for i in range(old.rank.get_length())]
            dims[0] = ov.Dimension(int(batch))
            new[port] = ov.PartialShape(dims)
    if not new:
        return
    try:
        ov_model.reshape(new)
    except Exception as e:
        what = ", ".join(f"{p.get_any_name()}:{s}" for p, s in new.items())
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConversionError(
            f"OpenVINO cannot reshape the model to {what} ({first}); the graph likely hard-codes "
            "a shape: export it with that shape or without --input/--batch"
        ) from e


def _fit_sample(sample: Feeds, port_shapes: dict[str, Any]) -> Feeds:
    """Make a calibration sample fit static input dims: repeat it along axis 0 when the
    model's batch is fixed larger than the sample's (``--batch N`` with batch-1 data)."""
    out = {}
    for name, arr in sample.items():
        ps = port_shapes.get(name)
        if ps is not None and ps.rank.is_static and arr.ndim == ps.rank.get_length() and arr.ndim:
            d0 = ps[0]
            if d0.is_static and d0.get_length() != arr.shape[0]:
                reps = -(-d0.get_length() // arr.shape[0])
                arr = np.concatenate([arr] * reps, axis=0)[: d0.get_length()]
        out[name] = arr
    return out


def resolve_ignored(
    entries: list[str] | tuple[str, ...], model: onnx.ModelProto, ov_model: Any
) -> dict[str, list[str]]:
    """``--ignore`` entries -> NNCF ignored-scope fields (``patterns``/``types``/``names``).

    Each entry is tried, in order, as: an ONNX node name (or the name of its first
    output, for unnamed nodes); an ONNX op type; an OpenVINO op type; an OpenVINO
    friendly name. OpenVINO names the ops it makes from ONNX node ``X`` ``X`` or
    ``X/...``, so ONNX nodes become anchored patterns.
    """
    nodes = _onnx_nodes(model)
    by_name: dict[str, onnx.NodeProto] = {}
    for i, n in enumerate(nodes):
        by_name.setdefault(_node_label(n, i), n)
        if n.name:
            by_name.setdefault(n.name, n)
    ov_ops = list(ov_model.get_ordered_ops())
    ov_types = {op.get_type_name() for op in ov_ops}
    ov_names = {op.get_friendly_name() for op in ov_ops}

    def pattern(label: str) -> str:
        return f"^{re.escape(label)}(/.*)?$"

    scope: dict[str, list[str]] = {"patterns": [], "types": [], "names": []}
    for entry in entries:
        if entry in by_name:
            scope["patterns"].append(pattern(entry))
        elif any(n.op_type == entry or _op_key(n) == entry for n in nodes):
            scope["patterns"] += [
                pattern(_node_label(n, i)) for i, n in enumerate(nodes) if n.op_type == entry or _op_key(n) == entry
            ]
        elif entry in ov_types:
            scope["types"].append(entry)
        elif entry in ov_names:
            scope["names"].append(entry)
        else:
            onnx_types = sorted({n.op_type for n in nodes})
            examples = [_node_label(n, i) for i, n in enumerate(nodes[:3])]
            raise UsageError(
                f"--ignore '{entry}': no node or op type of that name in the model; give an ONNX "
                f"node name (e.g. {', '.join(examples)}) or an op type ({', '.join(onnx_types)})"
            )
    # Keep order, drop repeats: the scope is part of what makes the output deterministic.
    return {k: list(dict.fromkeys(v)) for k, v in scope.items()}


def int8_model_type(model: onnx.ModelProto, options: BuildOptions) -> str:
    """``"transformer"`` or ``"default"``: as ``int8_model_type`` says, else by the graph.

    A graph with attention (MatMul -> Softmax -> MatMul, or a fused attention op) gets
    NNCF's transformer mode: SmoothQuant moves activation outliers into the weights,
    and Softmax, LayerNorm and the attention MatMuls' inputs are quantized the way
    transformers tolerate. On ViT-B/16, Swin-T and BERT with NNCF's defaults, INT8
    cosine to FP32 drops below 0.99 (``bench/openvino.py --zoo``).
    """
    chosen = options.target.int8_model_type
    if chosen:
        return chosen
    from mconv.graphinfo import attention_blocks

    return "transformer" if attention_blocks(model) else "default"


def int8_preset(model_type: str, options: BuildOptions) -> str:
    """The preset asked for, else ``mixed`` for transformers (NNCF's own choice for
    them: asymmetric activations after GELU/Softmax) and ``performance`` otherwise."""
    return options.target.int8_preset or ("mixed" if model_type == "transformer" else "performance")


def quantize_int8(ov_model: Any, model: onnx.ModelProto, options: BuildOptions) -> Any:
    """``nncf.quantize`` on the OpenVINO model with the calibration samples."""
    nncf = _import_nncf()
    model_type = int8_model_type(model, options)
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    preset = presets[int8_preset(model_type, options)]
    scope = resolve_ignored(list(options.target.ignore), model, ov_model)
    ignored = nncf.IgnoredScope(**scope, validate=False) if any(scope.values()) else None
    port_shapes = {}
    for port in ov_model.inputs:
        for n in port.get_names():
            port_shapes[n] = port.get_partial_shape()
    samples = [_fit_sample(s, port_shapes) for s in options.calib or []]
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if model_type == "transformer" else {}
    try:
        # NNCF draws progress bars on stdout; stdout belongs to the CLI's report.
        with contextlib.redirect_stdout(sys.stderr):
            return nncf.quantize(
                ov_model,
                nncf.Dataset(samples),
                preset=preset,
                subset_size=len(samples),
                ignored_scope=ignored,
                **kwargs,
            )
    except Exception as e:
        raise ConversionError(
            f"NNCF INT8 quantization failed ({type(e).__name__}: {str(e).strip()[:300]}); "
            "check that --calib samples match the model's inputs, or build with --fp16 instead"
        ) from e


def canonicalize_names(ov_model: Any, keep: set[str]) -> int:
    """Renumber names OpenVINO made from its process-wide counter, in graph order.

    ``Reshape_3318`` in one run is ``Reshape_6543`` in the next; every such token in
    a friendly name (also inside ``Reshape_3318/fq_weights_1``) becomes
    ``Reshape_<k>`` with ``k`` counted over the ordered ops, so files are
    byte-identical across runs. Names from the ONNX model (``keep``) are left alone.
    Returns how many ops were renamed.
    """
    ops = list(ov_model.get_ordered_ops())
    tokens: list[str] = []
    for op in ops:
        tokens += [m.group(0) for m in _AUTO_NAME.finditer(op.get_friendly_name())]
    tokens = [t for t in dict.fromkeys(tokens) if t not in keep]
    taken = set(keep) | set(tokens)
    mapping: dict[str, str] = {}
    seq = 0
    for tok in tokens:
        prefix = tok.rsplit("_", 1)[0]
        while f"{prefix}_{seq}" in taken:
            seq += 1
        mapping[tok] = f"{prefix}_{seq}"
        taken.add(mapping[tok])
        seq += 1
    renamed = 0
    for op in ops:
        old = op.get_friendly_name()
        new = _AUTO_NAME.sub(lambda m: mapping.get(m.group(0), m.group(0)), old)
        if new != old:
            op.set_friendly_name(new)
            renamed += 1
    return renamed


def port_info(port: Any) -> dict[str, Any]:
    ps = port.get_partial_shape()
    shape = None if ps.rank.is_dynamic else [d.get_length() if d.is_static else None for d in ps]
    return {
        "name": port.get_any_name(),
        "shape": shape,
        "dtype": port.get_element_type().to_dtype().name,
    }


def save_ir(ov_model: Any, out_dir: Path, stem: str, *, compress_to_fp16: bool) -> tuple[Path, Path]:
    """``openvino.save_model`` into a scratch folder inside ``out_dir``, then rename the
    finished ``.xml``/``.bin`` into place (nothing half-written is left on failure)."""
    ov = import_openvino()
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=out_dir))
    try:
        ov.save_model(ov_model, str(scratch / f"{stem}.xml"), compress_to_fp16=compress_to_fp16)
        xml, bin_ = out_dir / f"{stem}.xml", out_dir / f"{stem}.bin"
        os.replace(scratch / f"{stem}.bin", bin_)
        os.replace(scratch / f"{stem}.xml", xml)
    except OSError as e:
        raise ConversionError(f"cannot write the OpenVINO IR into {out_dir}: {e}") from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return xml, bin_
