"""The schedule an untuned build gets: parallel outer loops, vectorized inner ones.

TVM 0.27 lowers each fused operator to plain TIR loops and, for an LLVM target, compiles
them as they are: every loop serial, the innermost one a reduction (a 3x3 conv's ``rx``,
extent 3) that LLVM cannot vectorize, and each elementwise epilogue (bias, residual add,
ReLU) a separate pass over a temporary buffer. That is why an untuned library ran at ~40x
onnxruntime. TVM's own rule-based CPU schedules (``s_tir.dlight.cpu``: ``GEMV`` and
``Reduction``, i.e. softmax/norms) do not touch convolutions, pooling or elementwise ops.

:class:`ParallelVectorize` is a fixed rule (nothing is measured; the same library on every
build) for the functions no other rule or tuning record took. In each function:

1. Case *epilogue*: elementwise blocks after the main (reduction) block are inlined into
   the function's last block, which is then computed inside the main block's parallel loop.
2. Case *reduction* (``S..S R..R``, e.g. conv, matmul, pooling, mean): the last spatial
   axis is split by the vector width (when the output is contiguous along it and a lane
   count divides it), the reduction loops move outside the vector lanes, the spatial
   loops outside them are fused into one parallel loop, and the init is split off.
3. Case *injective* (pad, reshape, transpose, elementwise): the same without reduction
   loops.

Any block the rule cannot schedule (a primitive refuses) is left as TVM lowered it; a
function where the rule fails altogether is left untouched. Schedules only reorder, split
and annotate loops, which TIR checks for legality, so results stay exact to the loop order
of each reduction (a vectorized reduction sums in the same order per output element).
"""

from __future__ import annotations

from typing import Any

from mconv.targets.tvm.compile import import_tvm


def vector_lanes(target: Any, bits: int = 32) -> int:
    """Lanes of one vector register of ``target`` for ``bits``-wide values (at least 4)."""
    import_tvm()
    from tvm.target.codegen import llvm_get_vector_width

    width = llvm_get_vector_width(target)
    return max(4, (width if width > 0 else 128) // bits)


def default_schedule(target: Any) -> Any:
    """The pass that schedules every PrimFunc not yet scheduled (tuned or by an earlier
    rule): TVM's CPU GEMV rule, :class:`ParallelVectorize`, then TVM's CPU Reduction rule
    (softmax, norms), the first that takes a function."""
    import_tvm()
    from tvm.s_tir import dlight

    # Reduction last: it would take a conv with its pad and epilogue too, and compute the
    # padding again for every output element.
    return dlight.ApplyDefaultSchedule(dlight.cpu.GEMV(), _rule_class()(), dlight.cpu.Reduction())


_RULE: type | None = None


def _rule_class() -> type:
    """ParallelVectorize (made on first use: it subclasses a dlight class)."""
    global _RULE
    if _RULE is None:
        _RULE = _make_rule()
    return _RULE


def _make_rule() -> type:
    import_tvm()
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class ParallelVectorize(CPUScheduleRule):
        """Parallel outer spatial loops, vector lanes on the contiguous innermost spatial axis
        (see the module docstring for the cases)."""

        def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            try:
                blocks = normalize_prim_func(sch)
                if not blocks or sum(not b.is_injective() for b in blocks) > 1:
                    return None  # several reductions (softmax, norms): dlight's Reduction rule
                lanes = vector_lanes(target, _dtype_bits(sch, blocks[-1].block_rv))
                main = _main_block(blocks)
                last = blocks[-1]
                outer = None
                if main is not None and main is not last:
                    _inline_epilogue(sch, blocks, main, last)
                for info in blocks:
                    if info is main:
                        outer = _schedule_block(sch, info.block_rv, lanes)
                    elif info is last and outer is not None and _compute_at(sch, last.block_rv, outer):
                        _vectorize_innermost(sch, last.block_rv, lanes)
                    elif _alive(sch, info.block_rv):
                        _schedule_block(sch, info.block_rv, lanes)
            except Exception:  # a rule that does not fit leaves the function as lowered
                return None
            return sch

    return ParallelVectorize


def _main_block(blocks: list) -> Any:
    """The one reduction block (the function's anchor), or None when there is none or several."""
    reductions = [b for b in blocks if not b.is_injective()]
    return reductions[0] if len(reductions) == 1 else None


def _dtype_bits(sch: Any, block: Any) -> int:
    writes = sch.get(block).writes
    return int(writes[0].source.dtype.bits) if writes else 32


def _alive(sch: Any, block: Any) -> bool:
    try:
        sch.get(block)
    except Exception:  # inlined blocks are gone from the schedule
        return False
    return True


def _inline_epilogue(sch: Any, blocks: list, main: Any, last: Any) -> None:
    """Case epilogue: the elementwise blocks between ``main`` and ``last`` into their consumers."""
    after = blocks[blocks.index(main) + 1 : blocks.index(last)]
    for info in after:
        if info.is_injective():
            try:
                sch.compute_inline(info.block_rv)
            except Exception:  # one that cannot be inlined keeps its own loops
                continue


def _compute_at(sch: Any, block: Any, loop: Any) -> bool:
    try:
        sch.reverse_compute_at(block, loop, preserve_unit_loops=True)
    except Exception:
        return False
    return True


def _lane_count(extent: Any, lanes: int) -> int:
    """The largest of lanes, lanes/2, ... (at least 4) that divides ``extent``; 0 for none."""
    if not isinstance(extent, int):
        return 0
    n = lanes
    while n >= 4:
        if extent % n == 0:
            return n
        n //= 2
    return 0


def _contiguous_along(sch: Any, block: Any, iter_index: int) -> bool:
    """Whether the block's output is written contiguously along its iter ``iter_index``
    (the write's last index is that iter's variable)."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1:
        return False
    var = stmt.iter_vars[iter_index].var
    last = stmt.writes[0].region[-1]
    return last.min.same_as(var) and int(last.extent) == 1


def _unit_stride_reads(sch: Any, block: Any, iter_index: int) -> bool:
    """Whether every input the block reads along its iter ``iter_index`` is read contiguously
    (that iter only in the last index, with coefficient 1): vector loads, not gathers. A
    stride-2 conv's input is not, and gathers made it slower than serial loops."""
    from tvm import tirx
    from tvm.sym.pattern import detect_linear_equation
    from tvm.tirx.analysis import undefined_vars

    var = sch.get(block).iter_vars[iter_index].var

    def uses(expr: Any) -> bool:
        return any(v.same_as(var) for v in undefined_vars(expr))

    for read in sch.get(block).reads:
        *head, last = read.region
        if any(uses(r.min) for r in head):
            return False
        if uses(last.min):
            coeff = detect_linear_equation(last.min, [var])
            if len(coeff) != 2 or not isinstance(coeff[0], tirx.IntImm) or int(coeff[0]) != 1:
                return False
    return True


def _schedule_block(sch: Any, block: Any, lanes: int) -> Any:
    """Cases reduction and injective for one block; the parallel loop, or None when the block
    keeps its loops (a shape the rule does not take)."""
    from tvm import tirx

    stmt = sch.get(block)
    kind = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    kinds = [kind.get(iv.iter_type, "O") for iv in stmt.iter_vars]
    if "O" in kinds:  # an opaque iter: the rule knows nothing of its semantics
        return None
    loops = sch.get_loops(block)
    n_s = len(kinds) - kinds[::-1].index("S") if "S" in kinds else 0
    if n_s == 0 or len(loops) != len(kinds) or "S" in kinds[n_s:] or "R" in kinds[:n_s]:
        return None
    spatial, reduce = list(loops[:n_s]), list(loops[n_s:])
    along_last = _contiguous_along(sch, block, n_s - 1)
    vec = _lane_count(_extent(sch, spatial[-1]), lanes) if along_last and _unit_stride_reads(sch, block, n_s - 1) else 0
    inner = []
    if vec:
        outer_x, lane = sch.split(spatial[-1], factors=[None, vec])
        spatial[-1] = outer_x
        inner = [lane]
    elif along_last and len(spatial) > 1:
        # Strided reads (a stride-2 conv): the last axis stays a whole serial loop inside the
        # reduction, which LLVM vectorizes with interleaved loads; TIR's lanes would gather.
        inner = [spatial.pop()]
    if reduce and inner:
        sch.reorder(*spatial, *reduce, *inner)
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    if _extent(sch, fused) != 1:
        sch.parallel(fused)
    if vec:
        sch.vectorize(inner[0])
    if reduce:
        # After the vectorize: TIR vectorizes only a loop whose blocks are complete
        # reductions (with their init). The init's copy of the lane loop stays vectorized.
        sch.decompose_reduction(block, reduce[0])
    return fused


def _vectorize_innermost(sch: Any, block: Any, lanes: int) -> None:
    """The loops ``reverse_compute_at`` left under the parallel loop: vectorize the innermost
    when the output is contiguous along it."""
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    last = len(stmt.iter_vars) - 1
    if last < 0 or not _contiguous_along(sch, block, last) or not _unit_stride_reads(sch, block, last):
        return
    extent = _extent(sch, loops[-1])
    vec = _lane_count(extent, lanes)
    if vec == extent:
        sch.vectorize(loops[-1])
    elif vec:
        sch.vectorize(sch.split(loops[-1], factors=[None, vec])[1])


def _extent(sch: Any, loop: Any) -> Any:
    from tvm import tirx

    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else ext
