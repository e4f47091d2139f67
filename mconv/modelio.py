"""Loading and saving ONNX models safely.

Loading checks, in order: the file exists and is not empty, it parses as an
ONNX ModelProto, every external-data reference stays inside the model's own
folder and fits its file, every initializer holds as many bytes as its shape
declares, the opset is one the installed onnx knows, and ``onnx.checker``
accepts the graph. Each failure is an :class:`InputError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper

from mconv.errors import InputError
from mconv.fsutil import commit, discard, temp_path_for

# The oldest default-domain opset onnxruntime implements.
MIN_OPSET = 7
# protobuf cannot serialise a message of 2 GiB or more.
PROTO_LIMIT = 2**31 - 1
# Above this many tensor bytes, save weights as external data.
EXTERNAL_THRESHOLD = 1_900_000_000


def _itemsize(data_type: int) -> int:
    if data_type == TensorProto.STRING:
        return 0
    np_dtype = helper.tensor_dtype_to_np_dtype(data_type)
    bits = {TensorProto.INT4: 4, TensorProto.UINT4: 4}.get(data_type)
    if bits:
        return 1  # packed; size checked loosely below
    return np.dtype(np_dtype).itemsize


def tensor_nbytes(t: TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n * _itemsize(t.data_type)


def iter_tensors(model: onnx.ModelProto):
    """Every TensorProto in the model: initializers and constant attributes, subgraphs too."""
    yield from external_data_helper._get_all_tensors(model)


def _check_external(model: onnx.ModelProto, path: Path) -> None:
    base = path.resolve().parent
    for t in iter_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc:
            raise InputError(f"{path}: tensor '{t.name}' has external data without a location")
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or ":" in loc[:3]:
            raise InputError(
                f"{path}: tensor '{t.name}' points to external data at an absolute path "
                f"'{loc}'; external data must sit inside the model's folder {base}"
            )
        target = (base / loc).resolve()
        if not target.is_relative_to(base):
            raise InputError(
                f"{path}: tensor '{t.name}' points to external data '{loc}' outside the model's "
                f"folder {base}; refusing to follow it"
            )
        if not target.is_file():
            raise InputError(
                f"{path}: external data file '{loc}' for tensor '{t.name}' is missing; copy it beside the model"
            )
        offset = int(info.get("offset", 0) or 0)
        need = tensor_nbytes(t)
        length = int(info.get("length", need) or need)
        size = target.stat().st_size
        if length != need or offset + length > size:
            raise InputError(
                f"{path}: external data '{loc}' for tensor '{t.name}' is the wrong size "
                f"(tensor needs {need} bytes at offset {offset}, file has {size}); "
                "the model and its data file do not belong together"
            )


def _check_tensor_sizes(model: onnx.ModelProto, path: Path) -> None:
    fields = {
        TensorProto.FLOAT: "float_data",
        TensorProto.DOUBLE: "double_data",
        TensorProto.INT64: "int64_data",
        TensorProto.UINT64: "uint64_data",
    }
    for t in iter_tensors(model):
        if t.data_location == TensorProto.EXTERNAL or t.data_type == TensorProto.STRING:
            continue
        n = 1
        for d in t.dims:
            if d < 0:
                raise InputError(f"{path}: tensor '{t.name}' has a negative dimension {list(t.dims)}")
            n *= d
        if t.HasField("raw_data"):
            have, need = len(t.raw_data), tensor_nbytes(t)
            if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
                need = (n + 1) // 2
        else:
            field = fields.get(t.data_type, "int32_data")
            if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
                continue
            have, need = len(getattr(t, field)), n
        if have != need:
            raise InputError(
                f"{path}: tensor '{t.name}' declares shape {list(t.dims)} "
                f"({need} elements/bytes) but holds {have}; the file is corrupt"
            )


def _check_opset(model: onnx.ModelProto, path: Path) -> None:
    known = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < MIN_OPSET:
            raise InputError(
                f"{path}: opset {imp.version} is older than any runtime mconv targets supports "
                f"(the runtimes need opset {MIN_OPSET} or newer); upgrade it with "
                "onnx.version_converter.convert_version(model, 13) or re-export the model"
            )
        if imp.domain in ("", "ai.onnx") and imp.version > known:
            raise InputError(
                f"{path}: opset {imp.version} is newer than the installed onnx "
                f"{onnx.__version__} supports (up to {known}); upgrade onnx "
                "or re-export with a lower --opset"
            )


def parse_model(path: Path) -> onnx.ModelProto:
    """Parse without external data; raise InputError for anything that is not ONNX."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an .onnx file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(
            f"{path}: not a readable ONNX model (truncated or not ONNX: {type(e).__name__}); "
            "re-export it or check the download"
        ) from e
    if not model.HasField("graph") or not model.opset_import or model.ir_version <= 0:
        raise InputError(
            f"{path}: not an ONNX model (no graph, opset or IR version); re-export it or check the download"
        )
    return model


def load_onnx(path: str | os.PathLike[str], *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model with its external data, refusing unsafe or corrupt files."""
    path = Path(path)
    model = parse_model(path)
    _check_opset(model, path)
    _check_external(model, path)
    _check_tensor_sizes(model, path)
    if any(t.data_location == TensorProto.EXTERNAL for t in iter_tensors(model)):
        try:
            external_data_helper.load_external_data_for_model(model, str(path.resolve().parent))
        except Exception as e:
            raise InputError(f"{path}: cannot read external data: {e}") from e
    if check:
        check_model(model, path)
    return model


def weightless(model: onnx.ModelProto, keep_bytes: int = 4096) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers above ``keep_bytes`` (and external ones)
    are declared as typed graph inputs instead: what the checker and shape inference
    look at, without serialising the weights (seconds on a 350 MB model)."""
    skel = onnx.ModelProto()
    g = model.graph
    skel.ir_version, skel.producer_name = model.ir_version, model.producer_name
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    sg = skel.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.output.extend(g.output)
    declared = {i.name for i in g.input}
    sg.input.extend(g.input)
    for t in g.initializer:
        if tensor_nbytes(t) > keep_bytes or t.data_location == TensorProto.EXTERNAL:
            if t.name not in declared:
                sg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            sg.initializer.append(t)
    if skel.ir_version < 4:
        skel.ir_version = 4
    return skel


def check_model(model: onnx.ModelProto, path: Path | str = "<model>") -> None:
    """Run onnx.checker (on the graph without its large weights: their sizes are checked
    by :func:`_check_tensor_sizes`); on a graph too big to serialise, check structure only."""
    try:
        skel = weightless(model)
        if skel.ByteSize() < EXTERNAL_THRESHOLD:
            onnx.checker.check_model(skel)
        else:
            _check_structure(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: invalid ONNX model: {first}") from e


def _check_structure(model: onnx.ModelProto) -> None:
    """Topological order and dangling inputs, for models the checker cannot take."""
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    known.add("")
    for node in model.graph.node:
        for name in node.input:
            if name not in known:
                raise onnx.checker.ValidationError(
                    f"node '{node.name}' ({node.op_type}) reads '{name}', which is not produced "
                    "before it (graph not topologically sorted, dangling name, or a cycle)"
                )
        known.update(node.output)


def model_nbytes(model: onnx.ModelProto) -> int:
    return sum(tensor_nbytes(t) for t in iter_tensors(model) if t.data_location != TensorProto.EXTERNAL)


def save_onnx(
    model: onnx.ModelProto, dest: str | os.PathLike[str], *, external: bool | None = None, keep: bool = True
) -> list[Path]:
    """Write ``model`` atomically. Weights go to ``<name>.data`` beside it when the
    model is too big for one protobuf (or ``external=True``). Returns the files written.

    With ``keep=False`` the weights written to external data are not put back into
    ``model`` (it is left without them), which saves holding them twice while writing.
    """
    dest = Path(dest)
    if external is None:
        external = model_nbytes(model) >= EXTERNAL_THRESHOLD
    if not external:
        tmp = temp_path_for(dest)
        try:
            with open(tmp, "wb") as f:
                f.write(model.SerializeToString(deterministic=True))
        except BaseException:
            discard(tmp)
            raise
        commit(tmp, dest)
        return [dest]
    data_name = dest.name + ".data"
    data_dest = dest.with_name(data_name)
    tmp_data = temp_path_for(data_dest)
    tmp_model = temp_path_for(dest)
    try:
        _write_external(model, tmp_data, data_name, tmp_model, keep)
    except BaseException:
        discard(tmp_data)
        discard(tmp_model)
        raise
    commit(tmp_data, data_dest)
    commit(tmp_model, dest)
    return [dest, data_dest]


def _write_external(model: onnx.ModelProto, data_path: Path, location: str, model_path: Path, keep: bool) -> None:
    """Stream every large tensor to ``data_path`` and serialise the rest, without copying
    the whole model in memory."""
    moved: list[tuple[TensorProto, bytes]] = []
    offset = 0
    with open(data_path, "wb") as f:
        for t in iter_tensors(model):
            # tensor_nbytes reads dims only: touching t.raw_data copies the whole buffer.
            if not t.HasField("raw_data") or tensor_nbytes(t) < 1024:
                continue
            raw = t.raw_data
            size = len(raw)
            pad = (-offset) % 4096
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            if keep:
                moved.append((t, raw))
            del raw
            del t.external_data[:]
            for k, v in (("location", location), ("offset", str(offset)), ("length", str(size))):
                e = t.external_data.add()
                e.key, e.value = k, v
            t.data_location = TensorProto.EXTERNAL
            t.ClearField("raw_data")
            offset += size
    try:
        model_path.write_bytes(model.SerializeToString(deterministic=True))
    finally:
        # Restore the in-memory model so callers can keep using it (keep=True).
        for t, raw in moved:
            t.raw_data = raw
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
