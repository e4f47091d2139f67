"""ONNX -> ``.mnn`` with MNN's own converter and quantizer, called safely.

The pip package ``mnn`` ships the converter as a compiled module, ``_tools``
(``mnnconvert``: the ``MNNConvert`` command line as a list; ``mnnquant``: the
``quantized.out`` command line as a list). Its Python wrappers (``MNN.tools``, the
``mnnconvert``/``mnnquant`` scripts) are never used: on import they run
``pip install -U aliyun-log-python-sdk`` with whatever pip is on PATH and send usage
logs; ``mnnquant.py`` also passes three strings where ``_tools.mnnquant`` takes one list,
which aborts the process.

The compiled module prints to file descriptor 1 from C++ (a CPU banner when it loads,
progress, and errors such as ``These Op Not Support: ONNX::Hardmax`` followed by
``Converted Failed!``) and returns True whatever happened. So every call runs in a child
process (:func:`mconv.isolate.call_isolated`: a native crash or hang fails the build,
not mconv), its output is captured and parsed, and success means "the file exists".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import onnx

from mconv.errors import ConversionError, UnsupportedOpsError
from mconv.graphinfo import nodes_by_op
from mconv.targets.base import Feeds
from mconv.targets.mnn.files import BIZ_PREFIX, uuid_span

_UNSUPPORTED = re.compile(r"These Op Not Support:\s*(.*)")
# The converter's progress lines: not worth repeating in an error message.
_NOISE = ("The device supports", "Start to", "ONNX Model ir version", "ONNX Model opset version", "MNN use ")


def run_tool(tool: str, args: list[str]) -> str:
    """Run ``_tools.<tool>([tool, *args])`` and return what it printed (a child's body).

    Output is captured even under ``--verbose`` (it is parsed), then echoed to stderr.
    """
    from mconv.quiet import VERBOSE_ENV, quiet

    verbose = os.environ.pop(VERBOSE_ENV, None)
    printed: list[str] = []
    try:
        with quiet(printed):
            import _tools

            getattr(_tools, tool)([tool, *args])
    finally:
        if verbose is not None:
            os.environ[VERBOSE_ENV] = verbose
    text = "".join(printed)
    if verbose not in (None, "", "0"):
        sys.stderr.write(text)
    return text


def _call(tool: str, args: list[str], timeout: float) -> str:
    from mconv.isolate import call_isolated

    return call_isolated(
        "mconv.targets.mnn.convert:run_tool", {"tool": tool, "args": args}, timeout=timeout, what=f"MNN {tool}"
    )


def biz_code(precision: str, int8_mode: str | None) -> str:
    """What mconv writes into the file's business-code field (``recognise`` reads it back)."""
    return BIZ_PREFIX + precision + (f"-{int8_mode}" if precision == "int8" and int8_mode else "")


def stable_uuid(path: Path) -> None:
    """Replace the random UUID MNN's tools write into every model (``mnn_uuid``) by one
    derived from the rest of the file, so that the same input gives byte-identical files."""
    data = bytearray(path.read_bytes())
    span = uuid_span(data)
    if span is None or span[1] != 36:
        return
    start, n = span
    data[start : start + n] = bytes(n)
    digest = hashlib.sha256(data).digest()[:16]
    data[start : start + n] = str(uuid.UUID(bytes=digest, version=4)).encode()
    path.write_bytes(bytes(data))


def conversion_error(model: onnx.ModelProto, log: str, tool: str = "converter") -> ConversionError:
    """The converter's failure as op types + node names (exit 1), else its own last lines."""
    listed = {tok.split("::")[-1] for m in _UNSUPPORTED.finditer(log) for tok in m.group(1).split()}
    if listed:
        ops = {key: names for key, names in nodes_by_op(model).items() if key.split("::")[-1] in listed}
        return UnsupportedOpsError("mnn", ops or {op: [] for op in sorted(listed)})
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not any(n in ln for n in _NOISE)]
    detail = " ".join(lines[-4:])[:400] or "it wrote no file and printed no reason"
    return ConversionError(f"MNN's {tool} could not convert the model: {detail}. Nothing was written.")


def convert_onnx(model: onnx.ModelProto, dest: Path, *, precision: str, int8_mode: str | None, timeout: float) -> str:
    """Write ``dest`` (.mnn) from ``model``; FP16 stores weights as half, INT8 ``weight``
    stores them as 8-bit. Returns the converter's log."""
    from mconv.modelio import save_onnx

    with tempfile.TemporaryDirectory(prefix="mconv-mnn-") as tmp:
        src = Path(tmp) / "model.onnx"
        save_onnx(model, src, keep=False)
        args = ["-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(dest)]
        args += ["--bizCode", biz_code(precision, int8_mode)]
        if precision == "fp16":
            args.append("--fp16")
        elif precision == "int8" and int8_mode == "weight":
            args += ["--weightQuantBits", "8"]
        log = _call("mnnconvert", args, timeout)
    if not dest.is_file() or "Converted Success" not in log:
        dest.unlink(missing_ok=True)
        raise conversion_error(model, log)
    stable_uuid(dest)
    return log


def write_calibration(samples: list[Feeds], folder: Path) -> list[dict]:
    """The quantizer's ``sequence`` input format: one sub-folder per sample holding
    ``<input>.txt`` (whitespace-separated values, in C order) and ``input.json`` (shapes).

    Returns the config's ``inputs`` (name and shape of each input, from the first sample).
    """
    for i, sample in enumerate(samples):
        sub = folder / f"{i:06d}"
        for name, arr in sample.items():
            path = sub / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(map(repr, np.asarray(arr, np.float32).reshape(-1).tolist())) + "\n")
        shapes = [{"name": n, "shape": list(np.shape(a))} for n, a in sample.items()]
        (sub / "input.json").write_text(json.dumps({"inputs": shapes}))
    return [{"name": n, "shape": list(np.shape(a))} for n, a in samples[0].items()]


def quantize_full(model: onnx.ModelProto, dest: Path, samples: list[Feeds], *, timeout: float) -> str:
    """Calibrated INT8 (weights and activations): FP32 conversion, then MNN's quantizer
    (KL-divergence activation ranges, per-channel max-abs weights) on ``samples``."""
    with tempfile.TemporaryDirectory(prefix="mconv-mnnq-") as tmp:
        fp32 = Path(tmp) / "fp32.mnn"
        convert_onnx(model, fp32, precision="int8", int8_mode="full", timeout=timeout)
        inputs = write_calibration(samples, Path(tmp) / "calib")
        config = {
            "path": str(Path(tmp) / "calib"),
            "used_sample_num": len(samples),
            "feature_quantize_method": "KL",
            "weight_quantize_method": "MAX_ABS",
            "input_type": "sequence",
            "inputs": inputs,
        }
        cfg = Path(tmp) / "quant.json"
        cfg.write_text(json.dumps(config))
        log = _call("mnnquant", [str(fp32), str(dest), str(cfg)], timeout)
    if not dest.is_file() or "Quantize model done" not in log:
        dest.unlink(missing_ok=True)
        raise conversion_error(model, log, "quantizer")
    stable_uuid(dest)
    return log
