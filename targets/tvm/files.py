"""The files of a TVM artifact: ``<stem>.so`` (the compiled Relax VM executable) and
``<stem>.tvm.json`` beside it, which says what the library takes and how it was built.

The sidecar holds: ``format`` (``mconv-tvm``) and ``version``; ``inputs`` (name, shape,
dtype, in the order the library's ``main`` takes them); ``outputs`` (the ONNX output
names, in the order ``main`` returns them); ``target`` (the LLVM target, as TVM prints it),
``mcpu``; ``precision``; ``tvm_version``; ``tuning`` (trials, cache key, reuse), or null.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mconv.errors import InputError
from mconv.graphinfo import TensorInfo
from mconv.targets.base import Artifact, dims_of

FORMAT = "mconv-tvm"
VERSION = 1
SIDECAR_SUFFIX = ".tvm.json"


def sidecar_of(library: Path) -> Path:
    return library.with_name(library.name.removesuffix(".so") + SIDECAR_SUFFIX)


def library_of(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name.removesuffix(SIDECAR_SUFFIX) + ".so")


def write_sidecar(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=1) + "\n")
    os.replace(tmp, path)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's fields, or None when ``path`` is not one (by content)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def _looks_like_tvm_library(path: Path) -> bool:
    """An ELF file carrying TVM's module symbols (read in chunks; libraries can be large)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return False
            tail = b""
            while chunk := f.read(1 << 20):
                if b"__tvm_ffi_" in tail + chunk:
                    return True
                tail = chunk[-16:]
    except OSError:
        return False
    return False


def recognise_files(path: Path) -> tuple[Path, Path, dict[str, Any]] | None:
    """(library, sidecar, sidecar fields) for either half of an artifact, None when ``path``
    is neither; an InputError when the other half is missing."""
    path = Path(path)
    if path.name.endswith(SIDECAR_SUFFIX):
        data = read_sidecar(path)
        if data is None:
            return None
        lib = library_of(path)
        if not lib.is_file():
            raise InputError(f"{path}: TVM sidecar without its library {lib.name}; copy {lib} beside it")
        return lib, path, data
    if path.suffix != ".so" or not path.is_file():
        return None
    side = sidecar_of(path)
    if side.is_file():
        data = read_sidecar(side)
        if data is not None:
            return path, side, data
    if _looks_like_tvm_library(path):
        raise InputError(
            f"{path}: a TVM library without its sidecar {side.name} (input names, shapes, outputs); "
            f"copy {side} beside it, or rebuild with `mconv build --target tvm`"
        )
    return None


def artifact_from(lib: Path, side: Path, data: dict[str, Any]) -> Artifact:
    meta = {k: data.get(k) for k in ("inputs", "outputs", "target", "mcpu", "tvm_version", "tuning")}
    meta["output_names"] = list(data.get("outputs") or [])
    return Artifact("tvm", lib, [lib, side], str(data.get("precision") or "fp32"), meta)


def inputs_of(meta: dict[str, Any]) -> list[TensorInfo]:
    return [TensorInfo(m["name"], dims_of(m["shape"]), m.get("dtype") or "float32") for m in meta.get("inputs") or []]
