"""Serialise a :class:`~mconv.targets.litert.graph.Graph` as a ``.tflite`` flatbuffer
(schema version 3) with the builders of the ``tflite`` package.

Buffer 0 is the empty buffer every non-constant tensor points at; each constant
gets its own buffer, its bytes 16-aligned (kernels read weights in place).
Builtin codes above 127 also set ``deprecated_builtin_code`` to 127
(PLACEHOLDER_FOR_GREATER_OP_CODES), as the schema asks. ``metadata`` entries
(name -> bytes) are stored as extra buffers named in ``Model.metadata``.
"""

from __future__ import annotations

import functools
import importlib
import mmap

import flatbuffers
import numpy as np

from mconv.errors import MissingDependencyError
from mconv.targets.litert.graph import TENSOR_TYPES, Graph, Op, Tensor

FILE_IDENTIFIER = b"TFL3"
_ALIGN = 16


def tfl(module: str):
    """A module of the ``tflite`` schema bindings, e.g. ``tfl("Conv2DOptions")``."""
    try:
        return importlib.import_module(f"tflite.{module}")
    except ImportError as e:
        raise MissingDependencyError("tflite", "litert", str(e)) from e


# With ``release``, the C heap's free pages go back to the system after about this many
# bytes of weights were dropped (see _return_free_heap).
_TRIM_BYTES = 1 << 20


@functools.cache
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


def _return_free_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Arrays under glibc's mmap threshold live on the heap, whose freed pages
    stay in the process for reuse by later allocations: released weights would still
    count while the builder's pages fill up."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _builder(size: int) -> flatbuffers.Builder:
    """A Builder of ``size`` bytes whose pages are taken only as they are written (an
    anonymous mapping; a bytearray is zeroed whole up front): with ``serialise(...,
    release=True)`` the weights are then not held twice while they are copied in."""
    b = flatbuffers.Builder(0)
    b.Bytes = mmap.mmap(-1, size)
    b.head = size
    return b


def _bytes_vector(b: flatbuffers.Builder, data, align: int = _ALIGN) -> int:
    data = memoryview(data).cast("B")
    b.StartVector(1, len(data), align)
    b.head = b.head - len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return b.EndVector()


def _vector(b: flatbuffers.Builder, start, items: list[int], kind: str = "offset") -> int:
    start(b, len(items))
    for v in reversed(items):
        if kind == "offset":
            b.PrependUOffsetTRelative(v)
        else:
            b.PrependInt32(v)
    return b.EndVector()


def _int_vector(b: flatbuffers.Builder, values) -> int:
    return b.CreateNumpyVector(np.asarray(list(values), dtype=np.int32))


def _options(b: flatbuffers.Builder, table: str, fields: dict) -> int:
    mod = tfl(table)
    getattr(mod, f"{table}Start")(b)
    for key, value in fields.items():
        getattr(mod, f"{table}Add{key}")(b, value)
    return getattr(mod, f"{table}End")(b)


def _quant(b: flatbuffers.Builder, t: Tensor) -> int:
    q = tfl("QuantizationParameters")
    scale = b.CreateNumpyVector(np.asarray(t.quant.scale, np.float32).ravel())
    zp = b.CreateNumpyVector(np.asarray(t.quant.zero_point, np.int64).ravel())
    q.QuantizationParametersStart(b)
    q.QuantizationParametersAddScale(b, scale)
    q.QuantizationParametersAddZeroPoint(b, zp)
    q.QuantizationParametersAddQuantizedDimension(b, int(t.quant.axis))
    return q.QuantizationParametersEnd(b)


def _tensor(b: flatbuffers.Builder, t: Tensor, buffer: int) -> int:
    m = tfl("Tensor")
    name = b.CreateString(t.name)
    shape = _int_vector(b, t.shape)
    quant = _quant(b, t) if t.quant is not None else None
    m.TensorStart(b)
    m.TensorAddShape(b, shape)
    m.TensorAddType(b, TENSOR_TYPES[t.dtype])
    m.TensorAddBuffer(b, buffer)
    m.TensorAddName(b, name)
    if quant is not None:
        m.TensorAddQuantization(b, quant)
    return m.TensorEnd(b)


def _operator(b: flatbuffers.Builder, op: Op, code_index: int) -> int:
    m = tfl("Operator")
    ins = _int_vector(b, op.inputs)
    outs = _int_vector(b, op.outputs)
    opts = _options(b, *op.options) if op.options else None
    m.OperatorStart(b)
    m.OperatorAddOpcodeIndex(b, code_index)
    m.OperatorAddInputs(b, ins)
    m.OperatorAddOutputs(b, outs)
    if opts is not None:
        m.OperatorAddBuiltinOptionsType(b, getattr(tfl("BuiltinOptions").BuiltinOptions, op.options[0]))
        m.OperatorAddBuiltinOptions(b, opts)
    return m.OperatorEnd(b)


def _opcode(b: flatbuffers.Builder, code: int) -> int:
    m = tfl("OperatorCode")
    m.OperatorCodeStart(b)
    m.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
    m.OperatorCodeAddBuiltinCode(b, code)
    m.OperatorCodeAddVersion(b, 1)
    return m.OperatorCodeEnd(b)


def _buffer(b: flatbuffers.Builder, data) -> int:
    m = tfl("Buffer")
    vec = _bytes_vector(b, data) if data is not None and memoryview(data).nbytes else None
    m.BufferStart(b)
    if vec is not None:
        m.BufferAddData(b, vec)
    return m.BufferEnd(b)


def _named(b: flatbuffers.Builder, module: str, name: str, index: int, index_field: str) -> int:
    m = tfl(module)
    s = b.CreateString(name)
    getattr(m, f"{module}Start")(b)
    getattr(m, f"{module}AddName")(b, s)
    getattr(m, f"{module}Add{index_field}")(b, index)
    return getattr(m, f"{module}End")(b)


def _signature(b: flatbuffers.Builder, g: Graph) -> int:
    """One SignatureDef ("serving_default") keyed by the I/O tensors' names."""
    m = tfl("SignatureDef")
    ins = [_named(b, "TensorMap", g.tensors[i].name, i, "TensorIndex") for i in g.inputs]
    outs = [_named(b, "TensorMap", g.tensors[i].name, i, "TensorIndex") for i in g.outputs]
    vin = _vector(b, m.SignatureDefStartInputsVector, ins)
    vout = _vector(b, m.SignatureDefStartOutputsVector, outs)
    key = b.CreateString("serving_default")
    m.SignatureDefStart(b)
    m.SignatureDefAddInputs(b, vin)
    m.SignatureDefAddOutputs(b, vout)
    m.SignatureDefAddSignatureKey(b, key)
    m.SignatureDefAddSubgraphIndex(b, 0)
    return m.SignatureDefEnd(b)


def _subgraph(b: flatbuffers.Builder, g: Graph, codes: dict[str, int]) -> tuple[int, list]:
    m = tfl("SubGraph")
    buffers: list = [None]  # the constants' Tensors, read when their buffer is written
    tensors = []
    for t in g.tensors:
        index = 0
        if t.data is not None:
            buffers.append(t)
            index = len(buffers) - 1
        tensors.append(_tensor(b, t, index))
    ops = [_operator(b, op, codes[op.code]) for op in g.ops]
    vt = _vector(b, m.SubGraphStartTensorsVector, tensors)
    vo = _vector(b, m.SubGraphStartOperatorsVector, ops)
    vi, vout = _int_vector(b, g.inputs), _int_vector(b, g.outputs)
    name = b.CreateString("main")
    m.SubGraphStart(b)
    m.SubGraphAddTensors(b, vt)
    m.SubGraphAddInputs(b, vi)
    m.SubGraphAddOutputs(b, vout)
    m.SubGraphAddOperators(b, vo)
    m.SubGraphAddName(b, name)
    return m.SubGraphEnd(b), buffers


def serialise(
    g: Graph, metadata: dict[str, bytes] | None = None, description: str = "mconv", *, release: bool = False
) -> memoryview:
    """The ``.tflite`` bytes of ``g`` (compacted first: see :meth:`Graph.compact`), a view
    into the builder's buffer (no copy of the weights).

    ``release``: each constant's array is dropped from ``g`` once copied into the
    builder (the caller is done with ``g``), so the weights are not held twice when
    the file is complete.
    """
    g.compact()
    builtin = tfl("BuiltinOperator").BuiltinOperator
    size = sum(t.data.nbytes for t in g.tensors if t.data is not None)
    b = _builder(size + (1 << 16))
    names = list(dict.fromkeys(op.code for op in g.ops))
    codes = {n: i for i, n in enumerate(names)}
    opcodes = [_opcode(b, getattr(builtin, n)) for n in names]
    sub, buffers = _subgraph(b, g, codes)
    meta_entries = []
    for key, blob in (metadata or {}).items():
        buffers.append(blob)
        meta_entries.append((key, len(buffers) - 1))
    bufs, freed = [], 0
    for i, item in enumerate(buffers):
        if isinstance(item, Tensor):
            data = np.ascontiguousarray(item.data)  # read in place by _bytes_vector
            if release:
                item.data = None
                freed += data.nbytes
        else:
            data = item
        buffers[i] = None
        bufs.append(_buffer(b, data))
        del data
        if freed >= _TRIM_BYTES:
            _return_free_heap()
            freed = 0
    metas = [_named(b, "Metadata", k, i, "Buffer") for k, i in meta_entries]
    sig = _signature(b, g)
    m = tfl("Model")
    v_codes = _vector(b, m.ModelStartOperatorCodesVector, opcodes)
    v_subs = _vector(b, m.ModelStartSubgraphsVector, [sub])
    v_bufs = _vector(b, m.ModelStartBuffersVector, bufs)
    v_meta = _vector(b, m.ModelStartMetadataVector, metas) if metas else None
    v_sigs = _vector(b, m.ModelStartSignatureDefsVector, [sig])
    desc = b.CreateString(description)
    m.ModelStart(b)
    m.ModelAddVersion(b, 3)
    m.ModelAddOperatorCodes(b, v_codes)
    m.ModelAddSubgraphs(b, v_subs)
    m.ModelAddDescription(b, desc)
    m.ModelAddBuffers(b, v_bufs)
    if v_meta is not None:
        m.ModelAddMetadata(b, v_meta)
    m.ModelAddSignatureDefs(b, v_sigs)
    b.Finish(m.ModelEnd(b), file_identifier=FILE_IDENTIFIER)
    return memoryview(b.Bytes)[b.Head() :]
