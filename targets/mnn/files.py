"""Reading ``.mnn`` files without MNN: the model is a FlatBuffer (``MNN.fbs``, root ``Net``).

Only what mconv needs is read: the business code (where mconv records the precision), the
graph's input ops (name, shape, dtype), its output names and every tensor name (for
``verify --locate``). Reading never runs MNN's native code, so a corrupt or hostile file
cannot crash mconv here; the runtime itself only ever loads it in a child process.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from mconv.errors import InputError
from mconv.graphinfo import TensorInfo

# Field slots (vtable indices) from MNN.fbs; a union takes two (type, value).
_NET_BIZCODE, _NET_OPLISTS, _NET_OUTPUT_NAME, _NET_TENSOR_NAME, _NET_UUID = 0, 3, 4, 7, 11
_OP_MAIN, _OP_NAME, _OP_OUTPUTS, _OP_TYPE = 2, 3, 4, 5
_INPUT_DIMS, _INPUT_DTYPE = 0, 1
_OPTYPE_INPUT = 34
# MNN's DataType enum (TensorFlow's numbering) -> numpy names.
_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 9: "int64", 10: "bool"}
BIZ_PREFIX = "mconv:"


class _Table:
    """One FlatBuffer table at ``pos`` of ``buf`` (bounds are checked by struct)."""

    def __init__(self, buf, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt_len = struct.unpack_from("<H", buf, self.vt)[0]

    def _offset(self, slot: int) -> int:
        at = 4 + 2 * slot
        return struct.unpack_from("<H", self.buf, self.vt + at)[0] if at < self.vt_len else 0

    def _deref(self, slot: int) -> int | None:
        off = self._offset(slot)
        if not off:
            return None
        at = self.pos + off
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def int32(self, slot: int, default: int) -> int:
        off = self._offset(slot)
        return struct.unpack_from("<i", self.buf, self.pos + off)[0] if off else default

    def table(self, slot: int) -> _Table | None:
        at = self._deref(slot)
        return None if at is None else _Table(self.buf, at)

    def _vector(self, slot: int) -> tuple[int, int]:
        at = self._deref(slot)
        if at is None:
            return 0, 0
        return at + 4, struct.unpack_from("<I", self.buf, at)[0]

    def string(self, slot: int) -> str | None:
        at = self._deref(slot)
        if at is None:
            return None
        n = struct.unpack_from("<I", self.buf, at)[0]
        return bytes(self.buf[at + 4 : at + 4 + n]).decode("utf-8", "replace")

    def ints(self, slot: int) -> list[int]:
        start, n = self._vector(slot)
        return list(struct.unpack_from(f"<{n}i", self.buf, start)) if n else []

    def _refs(self, slot: int) -> list[int]:
        start, n = self._vector(slot)
        return [start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0] for i in range(n)]

    def tables(self, slot: int) -> list[_Table]:
        return [_Table(self.buf, at) for at in self._refs(slot)]

    def strings(self, slot: int) -> list[str]:
        out = []
        for at in self._refs(slot):
            n = struct.unpack_from("<I", self.buf, at)[0]
            out.append(bytes(self.buf[at + 4 : at + 4 + n]).decode("utf-8", "replace"))
        return out


@dataclass
class MnnNet:
    """What mconv reads from a ``.mnn`` file."""

    biz_code: str
    inputs: list[TensorInfo]
    outputs: list[str]
    tensors: list[str] = field(default_factory=list)

    @property
    def precision(self) -> str:
        """``fp32``/``fp16``/``int8`` as mconv recorded it (other writers' files: fp32)."""
        if self.biz_code.startswith(BIZ_PREFIX):
            return self.biz_code[len(BIZ_PREFIX) :].split("-")[0] or "fp32"
        return "fp32"

    @property
    def int8_mode(self) -> str | None:
        """``weight`` or ``full`` for mconv's INT8 files, else None."""
        head, _, mode = self.biz_code.partition("-")
        return mode or None if head == BIZ_PREFIX + "int8" else None


def _parse(buf) -> MnnNet:
    root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    ops = root.tables(_NET_OPLISTS)
    tensors = root.strings(_NET_TENSOR_NAME)
    if not ops or not tensors:
        raise ValueError("no ops or no tensor names")
    inputs = []
    for op in ops:
        if op.int32(_OP_TYPE, 0) != _OPTYPE_INPUT:
            continue
        outs = op.ints(_OP_OUTPUTS)
        name = tensors[outs[0]] if outs else op.string(_OP_NAME) or ""
        param = op.table(_OP_MAIN)
        dims = param.ints(_INPUT_DIMS) if param is not None else []
        dtype = _DTYPES.get(param.int32(_INPUT_DTYPE, 1) if param is not None else 1, "float32")
        inputs.append(TensorInfo(name, tuple(d if d > 0 else None for d in dims), dtype))
    return MnnNet(root.string(_NET_BIZCODE) or "", inputs, root.strings(_NET_OUTPUT_NAME), tensors)


def uuid_span(buf) -> tuple[int, int] | None:
    """(offset, length) of the model UUID string in ``buf`` (a valid model), if it has one."""
    at = _Table(buf, struct.unpack_from("<I", buf, 0)[0])._deref(_NET_UUID)
    return None if at is None else (at + 4, struct.unpack_from("<I", buf, at)[0])


def read_net(path: str | Path) -> MnnNet:
    """Parse ``path`` as an MNN model.

    Raises:
        InputError: the file is not one (truncated, corrupt, or another format).
    """
    path = Path(path)
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf)
    except (OSError, ValueError, struct.error, IndexError) as e:
        raise InputError(
            f"{path}: not a readable MNN model ({type(e).__name__}: {e}); rebuild it with "
            "`mconv build MODEL --target mnn`"
        ) from None
