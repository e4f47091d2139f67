"""The TensorRT target class: preflight, build backend choice, engine files and runner."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from mconv.errors import ConversionError, InputError, MissingDependencyError
from mconv.fsutil import write_text_atomic
from mconv.targets.base import Artifact, BuildOptions, Feeds, Finding, Runner, Target
from mconv.targets.tensorrt.engine import (
    ENGINE_SUFFIXES,
    INSTALL_HINT,
    METADATA_FORMAT,
    METADATA_VERSION,
    _io_json,
    _load_plugins,
    _Logs,
    _make_logger,
    build_with_python,
    build_with_trtexec,
    check_engine_compat,
    cuda_devices,
    current_runtime,
    engine_config,
    find_trtexec,
    import_tensorrt,
    read_sidecar,
    runtime_missing_reason,
    sidecar_path,
)
from mconv.targets.tensorrt.options import TensorRTOptions
from mconv.targets.tensorrt.support import (
    preflight_report,
    raise_on_blocking,
    supported_ops,
)

# ---------------------------------------------------------------- the target


class TensorRTTarget(Target):
    """NVIDIA TensorRT engines (needs TensorRT and a CUDA GPU to build and run)."""

    name: ClassVar[str] = "trt"
    aliases: ClassVar[tuple[str, ...]] = ()  # "tensorrt" is mapped by the registry
    extra: ClassVar[str] = "tensorrt"
    description: ClassVar[str] = "TensorRT engine (.engine) for NVIDIA GPUs; fp32/fp16/int8 (Q/DQ)"
    artifact_kind: ClassVar[str] = "TensorRT .engine"
    runtime_packages: ClassVar[tuple[str, ...]] = ("tensorrt",)
    isolate: ClassVar[bool] = True
    Options = TensorRTOptions

    def supported_ops(self) -> set[str] | None:
        return supported_ops()

    def runtime_missing(self) -> str | None:
        reason = runtime_missing_reason()
        if reason and find_trtexec() and cuda_devices()[1] is None:
            return None  # trtexec can build; the runner still needs the module
        return reason

    def preflight(self, model: onnx.ModelProto, options: BuildOptions) -> list[str]:
        engine_config(options)
        return raise_on_blocking(preflight_report(model, options))

    def findings(self, model: onnx.ModelProto, options: BuildOptions) -> list[Finding]:
        """The findings `mconv inspect --target trt` lists (none raise)."""
        return preflight_report(model, options)

    def _backend(self) -> tuple[str, str | None]:
        """("python", None) or ("trtexec", path); raise what is missing otherwise."""
        trt, err = import_tensorrt()
        trtexec = None if trt is not None else find_trtexec()
        if trt is None and trtexec is None:
            raise MissingDependencyError(
                "TensorRT (the `tensorrt` Python module, or `trtexec` on PATH)",
                "tensorrt",
                f"import failed: {err}; {INSTALL_HINT}",
            )
        _devices, dev_err = cuda_devices()
        if dev_err:
            raise ConversionError(
                f"--target trt needs a CUDA GPU: {dev_err}. TensorRT builds an engine on the GPU "
                "it will run on; run this on a machine with an NVIDIA GPU and driver "
                "(nvidia-smi must list it), or use `--target onnx --int8` for a CPU artifact"
            )
        return ("python", None) if trt is not None else ("trtexec", trtexec)

    def write(self, model: onnx.ModelProto, out_dir: Path, stem: str, options: BuildOptions) -> Artifact:
        from mconv.modelio import save_onnx

        warnings = self.preflight(model, options)  # cheap; guarantees nothing is built blind
        cfg = engine_config(options)
        backend, trtexec = self._backend()
        if cfg.precision == "int8":
            from mconv.targets.qdq import quantize_qdq

            model = quantize_qdq(
                model,
                options.calib or [],
                method=self.options_of(options).calib_method,
                ignore=tuple(self.options_of(options).ignore),
            )
        out_dir = Path(out_dir)
        engine_path = out_dir / f"{stem}.engine"
        with tempfile.TemporaryDirectory(prefix="mconv-trt-") as tmp:
            onnx_path = Path(tmp) / f"{stem}.onnx"
            save_onnx(model, onnx_path)
            if backend == "python":
                facts = build_with_python(onnx_path, model, engine_path, cfg)
            else:
                facts = build_with_trtexec(str(trtexec), onnx_path, engine_path, cfg)
        meta = {
            "format": METADATA_FORMAT,
            "version": METADATA_VERSION,
            "tensorrt": facts["tensorrt"],
            "gpu": facts["gpu"],
            "builder": facts["builder"],
            "precision": cfg.precision,
            "profiles": cfg.profiles_json(),
            "workspace": cfg.workspace,
            "plugins": cfg.plugins,
            "version_compatible": False,
            "hardware_compatibility": None,
            "preflight_warnings": warnings,
            **_io_json(model),
        }
        side = sidecar_path(engine_path)
        write_text_atomic(side, json.dumps(meta, indent=2) + "\n")
        return Artifact(self.name, engine_path, [engine_path, side], cfg.precision, meta)

    def runner(self, artifact: Artifact, *, threads: int | None = None) -> Runner:
        return TensorRTRunner(artifact, threads=threads)

    @classmethod
    def recognise(cls, path: Path) -> Artifact | None:
        """An engine file: ``.engine``/``.plan``/``.trt`` with or without our sidecar, or
        any file whose sidecar says it is one of ours."""
        path = Path(path)
        if path.suffix == ".json" and path.name.endswith(tuple(s + ".json" for s in ENGINE_SUFFIXES)):
            path = path.with_name(path.name[: -len(".json")])
        if not path.is_file():
            return None
        meta = read_sidecar(path)
        if meta is None and path.suffix not in ENGINE_SUFFIXES:
            return None
        files = [path] + ([sidecar_path(path)] if meta is not None else [])
        return Artifact(cls.name, path, files, (meta or {}).get("precision", "fp32"), meta or {})


# ---------------------------------------------------------------- the runner


class _TorchBuffers:
    """Device memory through PyTorch (when torch with CUDA is installed)."""

    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("torch has no CUDA device")
        self.torch = torch
        # The stream torch copies on, so uploads, the engine and downloads stay ordered.
        self.stream = torch.cuda.current_stream()

    @property
    def handle(self) -> int:
        return self.stream.cuda_stream

    def upload(self, arr: np.ndarray) -> tuple[Any, int]:
        t = self.torch.from_numpy(np.ascontiguousarray(arr)).cuda()
        return t, t.data_ptr()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        tdtype = self.torch.from_numpy(np.empty(0, dtype)).dtype
        t = self.torch.empty(shape, dtype=tdtype, device="cuda")
        return t, t.data_ptr()

    def download(self, buf: Any) -> np.ndarray:
        return buf.cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def free(self, buf: Any) -> None:
        del buf


class _CudaPythonBuffers:
    """Device memory through cuda-python's runtime bindings."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.cudart = cudart
        self.stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise ConversionError(f"CUDA runtime error {err}")
        return rest[0] if len(rest) == 1 else rest

    @property
    def handle(self) -> int:
        return int(self.stream)

    def upload(self, arr: np.ndarray) -> tuple[Any, int]:
        arr = np.ascontiguousarray(arr)
        ptr = self._ok(self.cudart.cudaMalloc(max(arr.nbytes, 1)))
        self._ok(
            self.cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
        )
        return (ptr, arr.shape, arr.dtype), int(ptr)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[Any, int]:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = self._ok(self.cudart.cudaMalloc(max(nbytes, 1)))
        return (ptr, shape, np.dtype(dtype)), int(ptr)

    def download(self, buf: Any) -> np.ndarray:
        ptr, shape, dtype = buf
        out = np.empty(shape, dtype)
        self._ok(
            self.cudart.cudaMemcpy(out.ctypes.data, ptr, out.nbytes, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        )
        return out

    def synchronize(self) -> None:
        self._ok(self.cudart.cudaStreamSynchronize(self.stream))

    def free(self, buf: Any) -> None:
        self.cudart.cudaFree(buf[0])


def _device_buffers() -> Any:
    errors = []
    for cls in (_TorchBuffers, _CudaPythonBuffers):
        try:
            return cls()
        except Exception as e:
            errors.append(f"{cls.__name__[1:]}: {type(e).__name__}: {e}")
    raise MissingDependencyError(
        "a CUDA buffer library (PyTorch with CUDA, or cuda-python)",
        "tensorrt",
        "pip install cuda-python; " + "; ".join(errors),
    )


class TensorRTRunner(Runner):
    """Runs an engine with TensorRT's Python API (TensorRT >= 8.5 tensor API)."""

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        super().__init__(artifact, threads=threads)
        self.engine: Any = None
        self.context: Any = None
        self.warnings: list[str] = []

    def load(self) -> None:
        if self.engine is not None:
            return
        path = Path(self.artifact.main)
        if not path.is_file():
            raise InputError(f"{path}: no such engine file")
        trt, err = import_tensorrt()
        if trt is None:
            raise MissingDependencyError(
                "TensorRT (the `tensorrt` Python module)",
                "tensorrt",
                f"needed to run {path.name}; {err}; {INSTALL_HINT}",
            )
        meta = read_sidecar(path)
        self.warnings = check_engine_compat(meta, current_runtime(), path)
        logs = _Logs()
        logger = _make_logger(trt, logs)
        _load_plugins(trt, logger, list((meta or {}).get("plugins") or ()))
        self._buffers = _device_buffers()
        self._runtime = trt.Runtime(logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ConversionError(
                f"{path}: TensorRT {trt.__version__} could not load the engine ({logs.errors()}); "
                "if it was built elsewhere, rebuild it on this machine"
            )
        self.context = self.engine.create_execution_context()
        self._trt = trt

    def _names(self, mode: str) -> list[str]:
        if self.engine is None:
            key = "inputs" if mode == "INPUT" else "outputs"
            known = [t["name"] for t in self.artifact.meta.get(key, [])]
            if known:
                return known
            self.load()
        want = getattr(self._trt.TensorIOMode, mode)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == want]

    def input_names(self) -> list[str]:
        return self._names("INPUT")

    def output_names(self) -> list[str]:
        return self._names("OUTPUT")

    def _select_profile(self, feeds: Feeds) -> None:
        n = self.engine.num_optimization_profiles
        if n <= 1:
            return
        for k in range(n):
            fits = True
            for name, arr in feeds.items():
                lo, _opt, hi = self.engine.get_tensor_profile_shape(name, k)
                if len(lo) != arr.ndim or any(not (a <= s <= b) for a, s, b in zip(lo, arr.shape, hi, strict=True)):
                    fits = False
                    break
            if fits:
                self.context.set_optimization_profile_async(k, self._buffers.handle)
                return
        raise InputError(
            f"{self.artifact.main}: input shapes "
            f"{ {k: list(v.shape) for k, v in feeds.items()} } fit none of the "
            f"engine's {n} optimization profiles"
        )

    def infer_impl(self, feeds: Feeds) -> Feeds:
        self.load()
        trt, engine, ctx, bufs = self._trt, self.engine, self.context, self._buffers
        self._select_profile(feeds)
        held = []
        try:
            for name in self.input_names():
                arr = np.ascontiguousarray(feeds[name], dtype=trt.nptype(engine.get_tensor_dtype(name)))
                if not ctx.set_input_shape(name, arr.shape):
                    raise InputError(
                        f"{self.artifact.main}: input '{name}' of shape "
                        f"{list(arr.shape)} is outside the engine's profile"
                    )
                buf, ptr = bufs.upload(arr)
                held.append(buf)
                ctx.set_tensor_address(name, ptr)
            outs = {}
            for name in self.output_names():
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ConversionError(
                        f"output '{name}' has a data-dependent shape {shape}; "
                        "the mconv runner does not support those yet"
                    )
                buf, ptr = bufs.empty(shape, trt.nptype(engine.get_tensor_dtype(name)))
                held.append(buf)
                outs[name] = buf
                ctx.set_tensor_address(name, ptr)
            if not ctx.execute_async_v3(bufs.handle):
                raise ConversionError(f"{self.artifact.main}: TensorRT execution failed")
            bufs.synchronize()
            return {name: bufs.download(buf) for name, buf in outs.items()}
        finally:
            for buf in held:
                bufs.free(buf)


def run_engine(artifact: dict[str, Any], feeds: list[Feeds]) -> list[Feeds]:
    """Entry point for :func:`mconv.isolate.call_isolated`: run ``feeds`` in a child."""
    runner = TensorRTRunner(Artifact.from_json(artifact))
    runner.load()
    return [runner.infer(f) for f in feeds]
