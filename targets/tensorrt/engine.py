"""TensorRT target: ONNX -> ``<stem>.engine`` + ``<stem>.engine.json``.

Engines are built with TensorRT's Python API (Builder, OnnxParser, BuilderConfig,
optimization profiles, timing cache) or, where only ``trtexec`` is installed, with
``trtexec`` and the same options. INT8 is explicit quantization: the model is first
turned into a Q/DQ ONNX by :func:`mconv.targets.qdq.quantize_qdq`.

An engine only loads in the TensorRT version, and on the GPU generation, that built
it. The sidecar ``<stem>.engine.json`` records both, and the runner compares them
with the machine it runs on before deserializing, so that a mismatch reads
"built with TensorRT 10.1.0, this machine has 10.3.0; rebuild" rather than the
runtime's "version tag does not match".

Nothing here imports ``tensorrt`` at module import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from mconv.errors import ConversionError, InputError, MissingDependencyError, UsageError
from mconv.fsutil import write_bytes_atomic
from mconv.graphinfo import graph_inputs, graph_outputs
from mconv.specs import ShapeProfile
from mconv.targets.base import BuildOptions
from mconv.targets.tensorrt.support import (
    normalize_profiles,
)

METADATA_FORMAT = "mconv-tensorrt-engine"
METADATA_VERSION = 1
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

INSTALL_HINT = (
    "NVIDIA's wheel needs Linux or Windows on x86_64/aarch64 with an NVIDIA driver and "
    "CUDA 12; alternatively put TensorRT's `trtexec` on PATH, or build a CPU artifact "
    "with `--target onnx --int8`"
)


# ---------------------------------------------------------------- environment


def import_tensorrt() -> tuple[Any | None, str | None]:
    """(module, None) or (None, why it cannot be imported)."""
    try:
        return importlib.import_module("tensorrt"), None
    except Exception as e:  # ImportError, or OSError for missing CUDA/TensorRT libraries
        return None, f"{type(e).__name__}: {e}"


def cuda_devices() -> tuple[list[dict[str, str]], str | None]:
    """GPUs seen by the CUDA driver, read through ``libcuda`` (no torch or cuda-python
    needed): ([{"name", "compute_capability"}], None) or ([], reason)."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so"]
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return [], "the NVIDIA driver's CUDA library (libcuda) is not installed"
    rc = lib.cuInit(0)
    if rc != 0:
        return [], f"the CUDA driver failed to initialise (cuInit error {rc}); no usable GPU"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return [], "the CUDA driver reports no GPU (check CUDA_VISIBLE_DEVICES and nvidia-smi)"
    devices = []
    for i in range(count.value):
        dev = ctypes.c_int(0)
        lib.cuDeviceGet(ctypes.byref(dev), i)
        buf = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(buf, 256, dev)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
        devices.append(
            {
                "name": buf.value.decode(errors="replace"),
                "compute_capability": f"{major.value}.{minor.value}",
            }
        )
    return devices, None


def find_trtexec() -> str | None:
    return shutil.which("trtexec")


def runtime_missing_reason() -> str | None:
    """Why engines cannot be built or run here (tensorrt module and CUDA GPU), else None."""
    trt, err = import_tensorrt()
    if trt is None:
        return f"the `tensorrt` Python module is not importable ({err})"
    _devices, dev_err = cuda_devices()
    return dev_err


def current_runtime() -> dict[str, Any]:
    """The TensorRT version and GPU of this machine, in the sidecar's vocabulary."""
    trt, _ = import_tensorrt()
    devices, _ = cuda_devices()
    return {"tensorrt": getattr(trt, "__version__", None), "gpu": devices[0] if devices else None}


# ---------------------------------------------------------------- options


@dataclass
class EngineConfig:
    """Builder settings taken from BuildOptions."""

    precision: str = "fp32"
    profiles: list[list[ShapeProfile]] = field(default_factory=list)
    workspace: int | None = None
    timing_cache: Path | None = None
    plugins: list[str] = field(default_factory=list)

    def profiles_json(self) -> list[list[dict[str, Any]]]:
        return [
            [{"name": p.name, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for p in group]
            for group in self.profiles
        ]


def engine_config(options: BuildOptions) -> EngineConfig:
    """Validate and normalize the TensorRT options (``options.target``, a TensorRTOptions)."""
    from mconv.targets.tensorrt.options import TensorRTOptions, workspace_size

    opts = options.target if isinstance(options.target, TensorRTOptions) else TensorRTOptions()
    if options.precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"--target trt: unknown precision '{options.precision}'")
    workspace = None if opts.workspace is None else workspace_size(opts.workspace)
    cache_path = Path(opts.timing_cache) if opts.timing_cache else None
    if cache_path is not None and cache_path.is_dir():
        raise UsageError(f"--timing-cache {cache_path}: is a folder; give a file path")
    plugins = [str(p) for p in opts.plugins]
    for p in plugins:
        if not Path(p).is_file():
            raise InputError(f"plugin library {p}: no such file")
    return EngineConfig(
        options.precision,
        normalize_profiles(opts.profiles),
        int(workspace) if workspace is not None else None,
        cache_path,
        plugins,
    )


# ---------------------------------------------------------------- metadata


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: Path) -> dict[str, Any] | None:
    side = sidecar_path(engine)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{side}: not readable JSON ({e}); delete it or rebuild the engine") from e
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        return None
    return meta


def _version_key(v: str, parts: int = 3) -> tuple[int, ...]:
    nums = [int(x) for x in re.findall(r"\d+", v)[:parts]]
    return tuple(nums + [0] * (parts - len(nums)))


def compare_metadata(built: dict[str, Any], here: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare an engine's sidecar with this machine: (errors, warnings).

    TensorRT engines need the same TensorRT major.minor.patch (unless built
    version-compatible, then a same-major, not older runtime) and the same compute
    capability (unless built hardware-compatible, then Ampere or newer)."""
    errors: list[str] = []
    warnings: list[str] = []
    bv, hv = built.get("tensorrt"), here.get("tensorrt")
    if not bv:
        warnings.append("the engine's metadata records no TensorRT version; cannot check it")
    elif hv:
        if built.get("version_compatible"):
            ok = _version_key(bv, 1) == _version_key(hv, 1) and _version_key(hv) >= _version_key(bv)
        else:
            ok = _version_key(bv) == _version_key(hv)
        if not ok:
            errors.append(
                f"it was built with TensorRT {bv} but this machine has TensorRT {hv}; an engine "
                f"only loads in the TensorRT version that built it: rebuild it here with "
                f"`mconv build MODEL --target trt` or install tensorrt=={bv}"
            )
    bg, hg = built.get("gpu") or {}, here.get("gpu") or {}
    bcc, hcc = bg.get("compute_capability"), hg.get("compute_capability")
    if not bcc:
        warnings.append("the engine's metadata records no GPU; cannot check it")
    elif hcc:
        if built.get("hardware_compatibility"):
            ok = _version_key(hcc, 2) >= (8, 0)
        else:
            ok = _version_key(bcc, 2) == _version_key(hcc, 2)
        if not ok:
            errors.append(
                f"it was built for {bg.get('name', 'a GPU')} (compute capability {bcc}) but this "
                f"GPU is {hg.get('name', '?')} (compute capability {hcc}); engines are specific to "
                "the GPU generation: rebuild it on this GPU"
            )
        elif bg.get("name") and hg.get("name") and bg["name"] != hg["name"]:
            warnings.append(
                f"it was tuned on {bg['name']} and runs on {hg['name']} (same compute capability "
                f"{hcc}); it works, but rebuild here for the best kernels"
            )
    return errors, warnings


def check_engine_compat(meta: dict[str, Any] | None, here: dict[str, Any], engine: Path) -> list[str]:
    """Raise ConversionError when ``engine`` cannot load here; return warnings."""
    if meta is None:
        return [
            f"{engine}: no {sidecar_path(engine).name} beside it; TensorRT version and GPU "
            "cannot be checked before loading"
        ]
    errors, warnings = compare_metadata(meta, here)
    if errors:
        raise ConversionError(f"{engine}: cannot load this engine: " + "; ".join(errors))
    return [f"{engine}: {w}" for w in warnings]


def _io_json(model: onnx.ModelProto) -> dict[str, list[dict]]:
    return {
        "inputs": [i.to_json() for i in graph_inputs(model)],
        "outputs": [o.to_json() for o in graph_outputs(model)],
    }


# ---------------------------------------------------------------- build: Python API


class _Logs:
    """Collects TensorRT log lines so errors can be reported in one message."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def errors(self) -> str:
        bad = [ln for ln in self.lines if ln.startswith(("ERROR", "INTERNAL_ERROR"))]
        return " | ".join(bad[-5:]) if bad else "no error was logged"


def _make_logger(trt: Any, logs: _Logs) -> Any:
    class CaptureLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            name = getattr(severity, "name", str(severity)).split(".")[-1]
            if name in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                logs.lines.append(f"{name}: {msg}")

    return CaptureLogger()


def _load_plugins(trt: Any, logger: Any, libraries: list[str]) -> None:
    trt.init_libnvinfer_plugins(logger, "")
    for lib in libraries:
        try:
            ctypes.CDLL(lib)  # plugins register themselves when loaded
        except OSError as e:
            raise ConversionError(f"plugin library {lib}: cannot be loaded ({e})") from e


def parser_errors(parser: Any, model: onnx.ModelProto) -> list[str]:
    """One line per parser error: node name, op type and reason."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        idx = err.node()
        name = op = ""
        with contextlib.suppress(Exception):
            name, op = err.node_name(), err.node_operator()  # TensorRT >= 10
        if (not name or not op) and 0 <= idx < len(model.graph.node):
            node = model.graph.node[idx]
            name, op = name or node.name or f"#{idx}", op or node.op_type
        where = f"node '{name}' ({op})" if name or op else "model"
        out.append(f"{where}: {err.desc()}")
    return out


def build_with_python(onnx_path: Path, model: onnx.ModelProto, engine_path: Path, cfg: EngineConfig) -> dict[str, Any]:
    """Build and write the engine with TensorRT's Python API; return metadata facts."""
    trt, err = import_tensorrt()
    if trt is None:
        raise MissingDependencyError("TensorRT (the `tensorrt` Python module)", "tensorrt", err or "")
    logs = _Logs()
    logger = _make_logger(trt, logs)
    _load_plugins(trt, logger, cfg.plugins)
    builder = trt.Builder(logger)
    # The parser owns the weights the network points to: it must live until the build is done.
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path, model)
    config = _builder_config(trt, builder, network, cfg)
    cache = _attach_timing_cache(config, cfg, logs)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError(f"TensorRT {trt.__version__} failed to build the engine: " + logs.errors())
    write_bytes_atomic(engine_path, bytes(memoryview(serialized)))
    if cache is not None:
        write_bytes_atomic(cfg.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    devices, _ = cuda_devices()
    return {
        "tensorrt": trt.__version__,
        "gpu": devices[0] if devices else None,
        "builder": "python",
        "log_warnings": [ln for ln in logs.lines if ln.startswith("WARN")][:20],
    }


def _parse_onnx(trt, builder, logger, onnx_path: Path, model: onnx.ModelProto) -> tuple[Any, Any]:
    """A network parsed from ``onnx_path`` and its parser.

    Raises:
        ConversionError: the parser rejected the model (its errors, by node).
    """
    flags = 0
    if _version_key(trt.__version__, 1)[0] < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = parser_errors(parser, model)
        raise ConversionError(
            f"TensorRT {trt.__version__}'s ONNX parser rejected the model: "
            + "; ".join(errs[:10])
            + (f" (+{len(errs) - 10} more)" if len(errs) > 10 else "")
        )
    return network, parser


def _builder_config(trt, builder, network, cfg: EngineConfig) -> Any:
    """A builder config with the workspace, the precision flags and the optimization profiles."""
    config = builder.create_builder_config()
    if cfg.workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace)
    if cfg.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ network: scales come from the model
    if cfg.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 would miss the FP32 tolerance
    shape_inputs = {
        network.get_input(i).name for i in range(network.num_inputs) if network.get_input(i).is_shape_tensor
    }
    for group in cfg.profiles:
        profile = builder.create_optimization_profile()
        for p in group:
            setter = profile.set_shape_input if p.name in shape_inputs else profile.set_shape
            setter(p.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    return config


def _attach_timing_cache(config, cfg: EngineConfig, logs: _Logs) -> Any:
    """Give ``config`` the timing cache file's contents (a new cache when it does not match); None without one."""
    if cfg.timing_cache is None:
        return None
    data = cfg.timing_cache.read_bytes() if cfg.timing_cache.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        logs.lines.append(
            f"WARNING: timing cache {cfg.timing_cache} does not match this TensorRT/GPU; starting a new one"
        )
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=True)
    return cache


# ---------------------------------------------------------------- build: trtexec


def _shapes_arg(group: list[ShapeProfile], which: str) -> str:
    return ",".join(f"{p.name}:" + "x".join(str(d) for d in getattr(p, which)) for p in group)


def trtexec_command(trtexec: str, onnx_path: Path, engine_path: Path, cfg: EngineConfig) -> list[str]:
    """The trtexec command line equivalent to the Python API build (TensorRT >= 8.6)."""
    if len(cfg.profiles) > 1:
        raise UsageError(
            f"{len(cfg.profiles)} optimization profiles: the trtexec fallback builds one; "
            "install the `tensorrt` Python module for several (pip install 'mconv[tensorrt]')"
        )
    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--skipInference"]
    if cfg.precision in ("fp16", "int8"):
        cmd.append("--fp16")
    if cfg.precision == "int8":
        cmd.append("--int8")
    if cfg.precision == "fp32":
        cmd.append("--noTF32")
    if cfg.workspace:
        cmd.append(f"--memPoolSize=workspace:{max(1, cfg.workspace // 2**20)}")  # MiB
    for group in cfg.profiles:
        for flag, which in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            cmd.append(f"{flag}={_shapes_arg(group, which)}")
    if cfg.timing_cache is not None:
        cmd.append(f"--timingCacheFile={cfg.timing_cache}")
    cmd += [f"--staticPlugins={p}" for p in cfg.plugins]
    return cmd


def parse_trtexec_version(text: str) -> str | None:
    """'[TensorRT v100100]' -> '10.1.0'; '[TensorRT v8601]' -> '8.6.1'."""
    m = re.search(r"TensorRT v(\d+)", text)
    if not m:
        return None
    n = int(m.group(1))
    if n >= 100000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


def build_with_trtexec(trtexec: str, onnx_path: Path, engine_path: Path, cfg: EngineConfig) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mconv-trtexec-") as tmp:
        raw = Path(tmp) / engine_path.name
        cmd = trtexec_command(trtexec, onnx_path, raw, cfg)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or not raw.is_file():
            errs = [ln.strip() for ln in out.splitlines() if "[E]" in ln][-8:]
            raise ConversionError(f"trtexec failed (exit {proc.returncode}): " + (" | ".join(errs) or out[-800:]))
        write_bytes_atomic(engine_path, raw.read_bytes())
    devices, _ = cuda_devices()
    gpu = devices[0] if devices else None
    name = re.search(r"Selected Device: (.+)", out)
    cc = re.search(r"Compute Capability: (\d+\.\d+)", out)
    if name and cc:
        gpu = {"name": name.group(1).strip(), "compute_capability": cc.group(1)}
    return {"tensorrt": parse_trtexec_version(out), "gpu": gpu, "builder": "trtexec"}
