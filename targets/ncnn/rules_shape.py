"""Layout and indexing: Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout,
Cast, Transpose, Concat, Split, Slice, Gather (constant indices, or token ids
into a constant table), Pad, Expand, Tile.

Cases:
    Shape-only ops (Reshape, Flatten, Squeeze, Unsqueeze) -> one ncnn Reshape
    (values keep their C order; only the Mat shape changes). The batch axis is
    carried when it stays a separate size-1 axis; a batch that came from a
    dynamic input dimension and is merged into another axis is refused.
    Identity / Dropout (inference) -> no layer (Cast: rules_logic).
    Transpose -> Permute after squeezing size-1 axes and merging axes that stay
    adjacent (so 5-D/6-D window partitions still fit ncnn's 4 dims).
    Concat -> Concat; Split -> Slice; Slice step 1 -> Crop (numpy style);
    step -1 -> Flip + Crop; step > 1 -> Crop + Reshape + Crop, else per-index
    crops + Concat. Gather with constant indices -> Crop (+ Concat) + Reshape.
    GatherElements from a constant: uniform -> constant; a 1-D table -> one-hot lookup.
    Gather of a constant [V, D] table on axis 0 with indices from an integer
    graph input -> Embed (ids fed as int32 bits; ncnn clamps them to [0, V-1]);
    with computed indices (float values) -> one-hot rows times the table
    (InnerProduct); computed data by computed indices -> one-hot rows times the data
    (MatMul); both up to a one-hot matrix of 2**24 elements.
    Pad constant/edge/reflect -> Padding (negative pads -> Crop).
    Expand -> BinaryOp add of zeros; Tile -> Tile.
"""

from __future__ import annotations

import itertools

import numpy as np

from mconv.targets.ncnn.ir import Weight
from mconv.targets.ncnn.lower import (
    Ctx,
    Node,
    NotLowerable,
    Tensor,
    default_keep,
    nc_shape,
    sanitize_hint,
)
from mconv.targets.ncnn.registry import rule


def perm_order_type(p: tuple[int, ...]) -> int:
    """ncnn Permute order_type: the index of ``p`` among lexicographic permutations
    (checked against the runtime for 2-, 3- and 4-D Mats)."""
    return list(itertools.permutations(range(len(p)))).index(tuple(p))


def carried_keep(ctx: Ctx, x: Tensor, out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output representation of a shape-only op on ``x`` (see module doc)."""
    if x.keep is None:
        return default_keep(out_shape)
    dropped = [a for a in range(x.rank) if a not in x.keep]
    if not dropped:
        return default_keep(out_shape)
    b = dropped[0]
    prefix = int(np.prod(x.shape[:b]))
    acc = 1
    for k, d in enumerate(out_shape):
        if acc == prefix and d == 1:
            keep = tuple(a for a in range(len(out_shape)) if a != k)
            if len(keep) <= 4:
                return keep
            return default_keep(out_shape)
        acc *= d
        if acc > prefix:
            break
    if x.dyn_batch:
        fix = " ".join(f"--input {n}:1x..." for n in sorted(ctx.prep.dyn_batch)) or "--input NAME:1x..."
        raise ctx.fail(
            f"the batch axis {b} of '{x.name}' {list(x.shape)} is merged into other axes "
            f"(output {list(out_shape)}); ncnn has no batch axis, so this model cannot run "
            f"with a batch other than 1: fix the batch to 1 with {fix} (or re-export it so)"
        )
    return default_keep(out_shape)


def _reshape_like(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    out = node.outputs[0]
    out_shape = ctx.out_shape()
    if x.const is not None:
        ctx.bind_const(out, np.asarray(x.const).reshape(out_shape))
        return
    assert x.blob is not None
    try:
        keep = carried_keep(ctx, x, out_shape)
    except NotLowerable:
        # More than 4 axes larger than 1 (window partitions): keep the blob
        # as it is; the consumer (a Transpose, a Reshape) reshapes it.
        ctx.bind_flat(out, x.blob)
        return
    blob = ctx.reshape(x.blob, nc_shape(out_shape, keep), name_hint=out)
    ctx.bind(out, blob, keep)


for _op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
    rule(_op)(_reshape_like)


@rule("Identity", "Dropout")
def identity(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    if node.op == "Dropout":
        training = node.const(2, "training_mode")
        ratio = node.const(1, "ratio")
        if training is not None and bool(np.asarray(training)) and (ratio is None or float(np.asarray(ratio)) != 0):
            raise NotLowerable("training-mode Dropout (random masks) has no inference lowering")
    ctx.alias(node.outputs[0], x)
    if len(node.outputs) > 1 and node.outputs[1]:
        # Inference-mode Dropout keeps everything: the mask is constant True.
        ctx.bind_const(node.outputs[1], np.ones(x.shape, bool))


def _groups(shape: tuple[int, ...], perm: list[int]) -> list[list[int]]:
    """Input axes (size-1 ones dropped) in output order, adjacent runs merged."""
    big = [a for a in range(len(shape)) if shape[a] != 1]
    groups: list[list[int]] = []
    for a in (a for a in perm if shape[a] != 1):
        if groups and big.index(a) == big.index(groups[-1][-1]) + 1:
            groups[-1].append(a)
        else:
            groups.append([a])
    return groups


def permute_blob(ctx: Ctx, blob: str, shape: tuple[int, ...], perm: list[int]) -> str:
    """A blob holding ``transpose(values of blob viewed as shape, perm)``.

    Size-1 axes are ignored; axes that stay adjacent merge (unless the blob
    already has one Mat axis per tensor axis), so most transposes are one 2-4-D
    Permute. More groups than ncnn's 4 dims are done
    as a sequence of moves, each bringing the next output axis to its place:
    moving one block past another is a permute of at most 4 groups (the axes
    before, the moved one, the block it passes, the axes after).
    """
    groups = _groups(shape, perm)
    if len(groups) <= 1:
        return blob
    big = tuple(shape[a] for a in range(len(shape)) if shape[a] != 1)
    if len(big) <= 4 and ctx.g.shapes.get(blob) == big:
        # The blob already has one Mat axis per tensor axis: permute it as it is
        # rather than merging axes, which costs a Reshape before and after
        # (ConvNeXt's NCHW <-> NHWC around each LayerNorm).
        return _permute_groups(ctx, blob, shape, [[a] for a in perm if shape[a] != 1])
    if len(groups) <= 4:
        return _permute_groups(ctx, blob, shape, groups)
    cur = list(range(len(shape)))
    for i, want in enumerate(perm):
        j = cur.index(want)
        if j == i:
            continue
        nxt = [*cur[:i], cur[j], *cur[i:j], *cur[j + 1 :]]
        here = tuple(shape[a] for a in cur)
        blob = _permute_groups(ctx, blob, here, _groups(here, [cur.index(a) for a in nxt]))
        cur = nxt
    return blob


def _permute_groups(ctx: Ctx, blob: str, shape: tuple[int, ...], groups: list[list[int]]) -> str:
    """One Permute of at most 4 merged axis groups (given in output order)."""
    if len(groups) <= 1:
        return blob
    in_groups = sorted(groups, key=lambda g: g[0])
    in_g = tuple(int(np.prod([shape[a] for a in g])) for g in in_groups)
    p = tuple(in_groups.index(g) for g in groups)
    xb = ctx.reshape(blob, in_g)
    out_g = tuple(in_g[i] for i in p)
    return ctx.emit("Permute", [xb], out_g, {0: perm_order_type(p)})


def permute(ctx: Ctx, x: Tensor, perm: list[int], out_name: str) -> None:
    """Emit ``transpose(x, perm)`` as reshape + Permute(s) + reshape."""
    out_shape = tuple(x.shape[p] for p in perm)
    assert x.blob is not None
    try:
        keep_out: tuple[int, ...] | None = default_keep(out_shape)
    except NotLowerable:
        keep_out = None
    src = x.blob if x.keep is None else ctx.blob_as(x)
    blob = permute_blob(ctx, src, x.shape, perm)
    if keep_out is None:
        ctx.bind_flat(out_name, blob)
        return
    blob = ctx.reshape(blob, nc_shape(out_shape, keep_out), name_hint=out_name)
    ctx.bind(out_name, blob, keep_out)


@rule("MconvShuffleChannel")
def shuffle_channel(ctx: Ctx, node: Node) -> None:
    """Channel shuffle fused by :func:`fuse.fuse_channel_shuffle` -> ShuffleChannel."""
    x = node.inputs[0]
    assert x is not None
    keep = (1, 2, 3)
    out = ctx.emit("ShuffleChannel", [ctx.blob_as(x, keep)], nc_shape(x.shape, keep),
                   {0: int(node.attr("group")), 1: 0}, out_name=node.outputs[0])  # fmt: skip
    ctx.bind(node.outputs[0], out, keep)


@rule("Transpose")
def transpose(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    perm = list(node.attr("perm", list(range(x.rank))[::-1]))
    permute(ctx, x, perm, node.outputs[0])


def _common_keep(out_shape: tuple[int, ...], ins: list[Tensor], need: tuple[int, ...]):
    for t in ins:
        if t.const is None and t.keep is not None and t.rank == len(out_shape):
            keep = t.keep
            if all(a in keep for a in need) and all(out_shape[a] == 1 for a in range(len(out_shape)) if a not in keep):
                return keep
    return default_keep(out_shape, need)


@rule("Concat")
def concat(ctx: Ctx, node: Node) -> None:
    ins = [t for t in node.inputs if t is not None and int(np.prod(t.shape)) > 0]
    out_shape = ctx.out_shape()
    axis = int(node.attr("axis"))
    axis = axis + len(out_shape) if axis < 0 else axis
    if len(ins) == 1:
        ctx.alias(node.outputs[0], ins[0])
        return
    try:
        keep = _common_keep(out_shape, ins, (axis,))
    except NotLowerable:
        if any(t.const is None and t.blob is None for t in ins):
            raise
        _concat_flat(ctx, node, ins, tuple(out_shape), axis)
        return
    blobs = [ctx.blob_as(t, keep) for t in ins]
    ax = keep.index(axis)
    blob = ctx.emit("Concat", blobs, nc_shape(out_shape, keep), {0: ax}, out_name=node.outputs[0])
    ctx.bind(node.outputs[0], blob, keep)


def _concat_flat(ctx: Ctx, node: Node, ins: list[Tensor], out_shape: tuple[int, ...], axis: int) -> None:
    """Concat into a tensor with more than 4 axes larger than 1 (``Tensor.unfold`` twice,
    6-D): in C order each part is a block of the (outer, axis, inner) view, as in
    :func:`_split_flat`; the result is bound flat unless it fits a Mat."""
    outer, inner = int(np.prod(out_shape[:axis])), int(np.prod(out_shape[axis + 1 :]))
    views = [(outer, t.shape[axis], inner) if outer > 1 else (t.shape[axis], inner) for t in ins]
    ax = len(views[0]) - 2
    blobs = []
    for t, v in zip(ins, views):
        if t.const is not None:
            blobs.append(ctx.const_blob(np.asarray(t.const, np.float32).reshape(v), v, sanitize_hint(t.name)))
        else:
            assert t.blob is not None
            blobs.append(ctx.reshape(t.blob, v, name_hint=t.name))
    dst = (*views[0][:ax], out_shape[axis], inner)
    out = node.outputs[0]
    ctx.bind_view(out, ctx.emit("Concat", blobs, dst, {0: ax}))


@rule("Split")
def split(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    axis = int(node.attr("axis", 0))
    axis = axis + x.rank if axis < 0 else axis
    outs = [o for o in node.outputs]
    sizes = [ctx.shape(o)[axis] for o in outs]
    try:
        keep = _common_keep(x.shape, [x], (axis,))
    except NotLowerable:
        _split_flat(ctx, x, axis, outs, sizes)
        return
    xb = ctx.blob_as(x, keep)
    ax = keep.index(axis)
    shapes = [nc_shape(ctx.shape(o), keep) for o in outs]
    blobs = ctx.layer(
        "Slice",
        [xb],
        shapes,
        {0: [*sizes[:-1], -233], 1: ax},
        out_names=outs,
    )
    for o, b in zip(outs, blobs):
        ctx.bind(o, b, keep)


def _split_flat(ctx: Ctx, x: Tensor, axis: int, outs: list[str], sizes: list[int]) -> None:
    """Split of a tensor with more than 4 axes larger than 1 (Swin's and MobileViT's
    [3, windows, heads, tokens, dim] qkv): in C order the parts are blocks of the
    (outer, axis, inner) view, a 2-D or 3-D Mat; each part then takes its own shape."""
    assert x.blob is not None
    outer, inner = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis + 1 :]))
    view = (outer, x.shape[axis], inner) if outer > 1 else (x.shape[axis], inner)
    ax = len(view) - 2
    xb = ctx.reshape(x.blob, view, name_hint=x.name)
    parts = [(*view[:ax], n, inner) for n in sizes]
    blobs = ctx.layer("Slice", [xb], parts, {0: [*sizes[:-1], -233], 1: ax}, out_names=outs)
    for o, b in zip(outs, blobs):
        ctx.bind_view(o, b)


def _crop(ctx: Ctx, blob: str, nc: tuple[int, ...], axis: int, start: int, end: int) -> str:
    out = list(nc)
    out[axis] = end - start
    if start == 0 and end == nc[axis]:
        return blob
    return ctx.emit("Crop", [blob], tuple(out), {9: [start], 10: [end], 11: [axis]})


def slice_axis(
    ctx: Ctx, blob: str, nc: tuple[int, ...], axis: int, start: int, step: int, count: int
) -> tuple[str, tuple[int, ...]]:
    """Elements ``start, start+step, ...`` (``count`` of them) along Mat ``axis``."""
    n = nc[axis]
    out = list(nc)
    out[axis] = count
    if count == 0:
        raise NotLowerable("empty slice")
    if step == 1:
        return _crop(ctx, blob, nc, axis, start, start + count), tuple(out)
    if step < 0:
        flipped = ctx.emit("Flip", [blob], nc, {0: [axis]})
        return slice_axis(ctx, flipped, nc, axis, n - 1 - start, -step, count)
    # Crop a block [b, b + step*count) holding the wanted elements at offset j of each
    # group of ``step`` (j = 0 when it fits; x[1::2] takes j = 1 from b = 0), view it
    # as (count, step) and keep column j.
    j = max(0, start + step * count - n)
    if j <= min(start, step - 1) and len(nc) < 4:
        b = start - j
        c = _crop(ctx, blob, nc, axis, b, b + step * count)
        v = (*nc[:axis], count, step, *nc[axis + 1 :])
        c = ctx.reshape(c, v)
        c = ctx.emit("Crop", [c], (*nc[:axis], count, 1, *nc[axis + 1 :]),
                     {9: [j], 10: [j + 1], 11: [axis + 1]})  # fmt: skip
        return ctx.reshape(c, tuple(out)), tuple(out)
    if count > 64:
        raise NotLowerable(f"strided slice of {count} elements")
    parts = [_crop(ctx, blob, nc, axis, start + i * step, start + i * step + 1) for i in range(count)]
    return ctx.emit("Concat", parts, tuple(out), {0: axis}), tuple(out)


@rule("Slice")
def slice_(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    if "starts" in node.attrs:  # opset < 10
        starts = list(node.attr("starts"))
        ends = list(node.attr("ends"))
        axes = list(node.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in node.const(1, "starts")]
        ends = [int(v) for v in node.const(2, "ends")]
        a = node.const(3, "axes")
        axes = [int(v) for v in a] if a is not None else list(range(len(starts)))
        s = node.const(4, "steps")
        steps = [int(v) for v in s] if s is not None else [1] * len(starts)
    out_shape = ctx.out_shape()
    if x.const is not None:
        raise NotLowerable("constant input (fold it first)")
    axes = [a + x.rank if a < 0 else a for a in axes]
    moved = [a for a, d_in in enumerate(x.shape) if d_in != out_shape[a]]
    keep = _common_keep(x.shape, [x], tuple(moved))
    blob = ctx.blob_as(x, keep)
    nc = nc_shape(x.shape, keep)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        n = x.shape[ax]
        if sp == 0:
            raise NotLowerable("step 0")
        first, _, _ = slice(st, en, sp).indices(n)
        count = out_shape[ax]
        if count == n and sp == 1:
            continue
        blob, nc = slice_axis(ctx, blob, nc, keep.index(ax), first, sp, count)
    ctx.bind(node.outputs[0], blob, keep)


def _embed(ctx: Ctx, node: Node, table: np.ndarray, ids: Tensor) -> None:
    """Rows of a constant [V, D] table picked by integer indices straight from a graph
    input: ncnn's Embed (it reads the input Mat as int32 and clamps to [0, V-1]).
    Integer tensors computed by layers would hold float values in ncnn, not int32
    bits: they are never read as Embed indices."""
    if table.ndim != 2 or int(node.attr("axis", 0)) not in (0, -2):
        raise NotLowerable("dynamic indices into a constant table: only axis 0 of a 2-D table (Embed)")
    v, d = table.shape
    words = int(np.prod(ids.shape)) if ids.shape else 1
    ib = ctx.reshape(ctx.blob_as(ids), (words,), name_hint=ids.name)
    weights = [Weight(np.ascontiguousarray(table, np.float32).ravel(), tagged=True)]
    blob = ctx.emit("Embed", [ib], (words, d), {0: d, 1: v, 2: 0, 3: int(table.size)}, weights)
    out_shape = ctx.out_shape()
    keep_out = default_keep(out_shape)
    blob = ctx.reshape(blob, nc_shape(out_shape, keep_out), name_hint=node.outputs[0])
    ctx.bind(node.outputs[0], blob, keep_out)


# Largest one-hot matrix (index rows x table rows) built for a lookup by computed
# indices: 16M floats, 64 MiB (RT-DETR's 300 queries of 8400 anchors take 2.5M).
ONE_HOT_MAX = 1 << 24


def _one_hot(ctx: Ctx, ids: Tensor, v: int) -> Tensor:
    """``one_hot(ids)`` as a (rows, v) Mat of 0/1 from computed indices (float values
    in ncnn); negative indices wrap as in ONNX."""
    from mconv.targets.ncnn.rules_elementwise import ADD, MIN, MUL, SUB
    from mconv.targets.ncnn.rules_logic import RSUB, UNARY_ABS, UNARY_SIGN, binary, scalar, unary

    rows = int(np.prod(ids.shape)) if ids.shape else 1
    if rows * v > ONE_HOT_MAX:
        raise NotLowerable(
            f"gather of {rows} computed indices from {v} rows: the one-hot lookup ncnn needs "
            f"({rows} x {v}) exceeds {ONE_HOT_MAX} elements (ncnn's Embed takes only int32 ids from a graph input)"
        )
    col = Tensor(f"{ids.name}_col", (rows, 1), np.dtype("float32"),
                 blob=ctx.reshape(ctx.blob_as(ids), (rows, 1), name_hint=ids.name), keep=(0, 1))  # fmt: skip
    wrap = scalar(ctx, scalar(ctx, unary(ctx, col, UNARY_SIGN), MIN, 0.0), MUL, -float(v))  # V where negative
    idx = binary(ctx, ADD, col, wrap, (rows, 1))
    grid = Tensor("arange", (1, v), np.dtype("float32"), const=np.arange(v, dtype=np.float32)[None])
    return scalar(ctx, unary(ctx, unary(ctx, binary(ctx, SUB, idx, grid, (rows, v)), UNARY_SIGN), UNARY_ABS), RSUB, 1.0)


def _one_hot_lookup(ctx: Ctx, node: Node, table: np.ndarray, ids: Tensor, axis: int | None = 0) -> None:
    """Rows of a constant table picked by computed indices (e.g. positions derived
    from a mask, anchors picked by a top-k): ``one_hot(ids) @ table`` (InnerProduct),
    exact since each output sums one product by 1 and zeros."""
    from mconv.targets.ncnn.rules_linear import inner_product

    if axis is not None:
        axis = int(node.attr("axis", 0)) % table.ndim
        if any(d != 1 for d in table.shape[:axis]):
            raise NotLowerable(f"gather on axis {axis} of a constant table of shape {list(table.shape)}")
        table = table.reshape(table.shape[axis:])
    v = table.shape[0]
    hot = _one_hot(ctx, ids, v)
    inner_product(ctx, hot, np.asarray(table, np.float32).reshape(v, -1).T, None, node.outputs[0])


def _dynamic_lookup(ctx: Ctx, node: Node, x: Tensor, ids: Tensor) -> None:
    """Gather of computed data by computed indices along an axis with only 1s
    before it (RT-DETR's top-k query features): ``one_hot(ids) @ data`` (MatMul)."""
    axis = int(node.attr("axis", 0)) % x.rank
    if any(d != 1 for d in x.shape[:axis]):
        raise NotLowerable(f"gather by computed indices on axis {axis} of {list(x.shape)}")
    v = int(x.shape[axis])
    inner = int(np.prod(x.shape[axis + 1 :]))
    hot = _one_hot(ctx, ids, v)
    assert hot.blob is not None
    hb = ctx.reshape(hot.blob, (hot.shape[0], v))
    data = ctx.reshape(ctx.blob_as(x), (v, inner), name_hint=x.name)
    mm = ctx.emit("MatMul", [hb, data], (hot.shape[0], inner), {0: 0})
    out_shape = ctx.out_shape()
    keep = default_keep(out_shape)
    ctx.bind(node.outputs[0], ctx.reshape(mm, nc_shape(out_shape, keep), name_hint=node.outputs[0]), keep)


@rule("Gather")
def gather(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    ids = node.inputs[1]
    if x.const is not None and ids is not None and ids.name in ctx.int_inputs:
        _embed(ctx, node, x.const, ids)
        return
    if x.const is not None and ids is not None and ids.const is None:
        _one_hot_lookup(ctx, node, np.asarray(x.const), ids)
        return
    if ids is not None and ids.const is None:
        _dynamic_lookup(ctx, node, x, ids)
        return
    idx = np.asarray(node.const(1, "indices")).astype(np.int64)
    if x.const is not None:
        raise NotLowerable("gather from a constant table with dynamic indices")
    axis = int(node.attr("axis", 0))
    axis = axis + x.rank if axis < 0 else axis
    n = x.shape[axis]
    flat = [int(i) + n if i < 0 else int(i) for i in idx.ravel()]
    try:
        keep = _common_keep(x.shape, [x], (axis,))
        blob = ctx.blob_as(x, keep)
        nc = nc_shape(x.shape, keep)
        ax = keep.index(axis)
    except NotLowerable:
        # Too many axes for a Mat: view as (outer, n, inner) around the axis.
        assert x.blob is not None
        outer, inner = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis + 1 :]))
        nc = (outer, n, inner) if outer > 1 else (n, inner)
        ax = 1 if outer > 1 else 0
        blob = ctx.reshape(x.blob, nc, name_hint=x.name)
    _take(ctx, node, blob, nc, ax, flat)


def _progressions(flat: list[int]) -> list[tuple[int, int, int]]:
    """``flat`` as maximal arithmetic runs (start, step, count), left to right."""
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(flat):
        step = flat[i + 1] - flat[i] if i + 1 < len(flat) else 1
        j = i + 1
        if step != 0:
            while j < len(flat) and flat[j] - flat[j - 1] == step:
                j += 1
        runs.append((flat[i], step if j - i > 1 else 1, j - i))
        i = j
    return runs


def _take(ctx: Ctx, node: Node, blob: str, nc: tuple[int, ...], ax: int, flat: list[int]) -> None:
    """Bind ``node``'s output to the items ``flat`` (constant) along Mat axis ``ax`` of ``blob``:
    one Crop for a run, a strided slice per arithmetic run (the window rows of an
    unfold written as Gather: HaloNet, VOLO), concatenated; up to 64 runs. An output
    with more than 4 axes larger than 1 is bound flat for its reshaping consumer."""
    if not flat:
        raise NotLowerable("gather of no index (ncnn Mats cannot be empty)")
    runs = _progressions(flat)
    if len(runs) > 64:
        raise NotLowerable(f"gather of {len(flat)} scattered indices")
    parts = [slice_axis(ctx, blob, nc, ax, start, step, count)[0] for start, step, count in runs]
    out = list(nc)
    out[ax] = len(flat)
    ctx.bind_view(node.outputs[0], parts[0] if len(parts) == 1 else ctx.emit("Concat", parts, tuple(out), {0: ax}))


@rule("GatherND")
def gather_nd(ctx: Ctx, node: Node) -> None:
    """GatherND with constant index tuples (batch_dims 0) -> a Gather of the flattened
    leading axes: the dynamo exporter writes BERT's ``mask[:, None, None, :]`` as one
    (a run of indices: a Crop, here the whole row)."""
    x, ids = node.inputs[0], node.inputs[1]
    assert x is not None and ids is not None
    if int(node.attr("batch_dims", 0)) != 0:
        raise NotLowerable("GatherND with batch_dims")
    if ids.const is None:
        raise NotLowerable("GatherND with computed indices (ncnn has no gather of index tuples)")
    if x.const is not None or x.blob is None:
        raise NotLowerable("GatherND from a constant (fold first)")
    idx = np.asarray(ids.const).astype(np.int64)
    k = idx.shape[-1]
    lead = tuple(int(d) for d in x.shape[:k])
    tuples = idx.reshape(-1, k)
    tuples = np.where(tuples < 0, tuples + np.asarray(lead), tuples)
    if tuples.size and (tuples.min() < 0 or np.any(tuples >= np.asarray(lead))):
        raise NotLowerable("GatherND index out of range")
    flat = [int(i) for i in np.ravel_multi_index(tuples.T, lead)] if tuples.size else []
    n, inner = int(np.prod(lead)), int(np.prod(x.shape[k:]))
    if n * inner != int(np.prod(x.shape)) or x.dyn_batch:
        raise NotLowerable("GatherND over a run-time batch")
    nc = (n, inner) if inner > 1 else (n,)
    blob = ctx.reshape(x.blob, nc, name_hint=x.name)  # any blob holds its values in C order
    _take(ctx, node, blob, nc, 0, flat)


@rule("GatherElements")
def gather_elements(ctx: Ctx, node: Node) -> None:
    """GatherElements from a constant: all values equal -> that constant; a table
    along one axis (every other dim 1) -> a lookup of computed indices (one-hot).
    Dynamic data with dynamic indices has no ncnn layer."""
    x, ids = node.inputs[0], node.inputs[1]
    assert x is not None and ids is not None
    if x.const is None and ids.const is not None:
        _gather_elements_affine(ctx, node, x, np.asarray(ids.const).astype(np.int64))
        return
    if x.const is None:
        raise NotLowerable("GatherElements of dynamic data (ncnn has no per-element gather)")
    data = np.asarray(x.const)
    axis = int(node.attr("axis", 0))
    axis = axis + data.ndim if axis < 0 else axis
    if data.size and np.all(data == data.ravel()[0]):
        ctx.bind_const(node.outputs[0], np.full(ctx.out_shape(), data.ravel()[0], data.dtype))
        return
    if any(d != 1 for a, d in enumerate(data.shape) if a != axis):
        raise NotLowerable("GatherElements from a constant with more than one non-unit axis")
    _one_hot_lookup(ctx, node, data.reshape(-1), ids, axis=None)


_PAD_MODES = {"constant": 0, "edge": 1, "reflect": 2}


@rule("Pad")
def pad(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    mode = node.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise NotLowerable(f"pad mode {mode}")
    if "pads" in node.attrs:
        pads = list(node.attr("pads"))
        value = float(node.attr("value", 0.0))
        axes = list(range(x.rank))
    else:
        pads = [int(v) for v in node.const(1, "pads")]
        cv = node.const(2, "constant_value") if len(node.inputs) > 2 else None
        value = float(np.asarray(cv).ravel()[0]) if cv is not None and cv.size else 0.0
        a = node.const(3, "axes") if len(node.inputs) > 3 else None
        axes = [int(v) for v in a] if a is not None else list(range(x.rank))
    axes = [a + x.rank if a < 0 else a for a in axes]
    k = len(axes)
    begin = dict.fromkeys(range(x.rank), 0)
    end = dict.fromkeys(range(x.rank), 0)
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + k]
    touched = tuple(a for a in range(x.rank) if begin[a] or end[a])
    keep = _common_keep(x.shape, [x], touched)
    blob = ctx.blob_as(x, keep)
    nc = nc_shape(x.shape, keep)
    m = len(nc)
    slots = {m - 1: (2, 3), m - 2: (0, 1), m - 3: (7, 8)}
    p: dict = {4: _PAD_MODES[mode], 5: value}
    padded = list(nc)
    crops = []
    for a in touched:
        i = keep.index(a)
        if i not in slots:
            raise NotLowerable(f"padding the outermost axis of a {m}-D Mat")
        b, e = begin[a], end[a]
        if b > 0 or e > 0:
            p[slots[i][0]] = max(b, 0)
            p[slots[i][1]] = max(e, 0)
            padded[i] += max(b, 0) + max(e, 0)
        if b < 0 or e < 0:
            crops.append((i, -min(b, 0), -min(e, 0)))
    if any(k_ in p for k_ in (0, 1, 2, 3, 7, 8)):
        blob = ctx.emit("Padding", [blob], tuple(padded), p)
    cur = tuple(padded)
    for i, cb, ce in crops:
        blob = _crop(ctx, blob, cur, i, cb, cur[i] - ce)
        cur = (*cur[:i], cur[i] - cb - ce, *cur[i + 1 :])
    ctx.bind(node.outputs[0], blob, keep)


@rule("Expand")
def expand(ctx: Ctx, node: Node) -> None:
    from mconv.targets.ncnn.rules_elementwise import ADD, binary_tensors

    x = node.inputs[0]
    assert x is not None
    out_shape = ctx.out_shape()
    if tuple(x.shape) == tuple(out_shape):
        ctx.alias(node.outputs[0], x)
        return
    padded = (1,) * (len(out_shape) - x.rank) + tuple(x.shape)
    zshape = tuple(o if p == 1 else 1 for o, p in zip(out_shape, padded))
    zeros = Tensor("zeros", zshape, np.dtype("float32"), const=np.zeros(zshape, np.float32))
    # A float zeros operand broadcasts x exactly like Expand does.
    blob, keep = binary_tensors(ctx, ADD, x, zeros, tuple(out_shape), node.outputs[0])
    ctx.bind(node.outputs[0], blob, keep)


@rule("Tile")
def tile(ctx: Ctx, node: Node) -> None:
    x = node.inputs[0]
    assert x is not None
    reps = [int(v) for v in node.const(1, "repeats")]
    out_shape = ctx.out_shape()
    touched = tuple(a for a, r in enumerate(reps) if r != 1)
    keep = _common_keep(x.shape, [x], touched)
    blob = ctx.blob_as(x, keep)
    nc = list(nc_shape(x.shape, keep))
    for a in touched:
        i = keep.index(a)
        out = list(nc)
        out[i] *= reps[a]
        blob = ctx.emit("Tile", [blob], tuple(out), {0: i, 1: reps[a]})
        nc = out
    ctx.bind(node.outputs[0], blob, keep)
    assert tuple(nc) == nc_shape(out_shape, keep)


@rule("ScatterND")
def scatter_nd(ctx: Ctx, node: Node) -> None:
    """ScatterND (reduction none) whose constant index tuples enumerate one block
    ``data[s0:e0, s1:e1, ...]`` in C order (``attn[:, :, s:, s:] = ...`` as MViTv2 writes
    it): the whole tensor -> the updates; a block inside -> the updates between Crops of
    the data, concatenated axis by axis. Other index patterns have no ncnn layer."""
    x, ids, upd = node.inputs[0], node.inputs[1], node.inputs[2]
    assert x is not None and ids is not None and upd is not None
    reduction = node.attr("reduction", b"none")
    if (reduction.decode() if isinstance(reduction, bytes) else str(reduction)) != "none":
        raise NotLowerable("ScatterND with a reduction")
    if ids.const is None:
        raise NotLowerable("ScatterND with computed indices (ncnn has no scatter)")
    idx = np.asarray(ids.const).astype(np.int64)
    k = idx.shape[-1]
    shape = tuple(int(d) for d in x.shape)
    tuples = idx.reshape(-1, k)
    tuples = np.where(tuples < 0, tuples + np.asarray(shape[:k]), tuples)
    lo, hi = tuples.min(axis=0), tuples.max(axis=0) + 1
    block = tuple(int(h - s) for s, h in zip(lo, hi))
    grid = np.indices(block).reshape(k, -1).T + lo
    if tuples.shape != grid.shape or not np.array_equal(tuples, grid):
        raise NotLowerable("ScatterND indices are not one block in order")
    full = block == shape[:k]
    upd_shape = (*block, *shape[k:])
    if int(np.prod(upd.shape)) != int(np.prod(upd_shape)):
        raise NotLowerable("ScatterND updates do not fill the block")
    out = node.outputs[0]
    out_shape = ctx.out_shape()
    keep = default_keep(out_shape)
    if full:
        if upd.const is not None:
            ctx.bind_const(out, np.asarray(upd.const).reshape(out_shape))
            return
        assert upd.blob is not None
        ctx.bind(out, ctx.reshape(upd.blob, nc_shape(out_shape, keep), name_hint=out), keep)
        return
    if x.blob is None and x.const is None:
        raise NotLowerable(f"'{x.name}' was not lowered")
    xb = ctx.blob_as(x, keep)
    upd_nc = nc_shape(upd_shape, keep)
    if upd.const is not None:
        ub = ctx.const_blob(np.asarray(upd.const, np.float32).reshape(upd_shape), upd_nc, "updates")
    else:
        assert upd.blob is not None
        ub = ctx.reshape(upd.blob, upd_nc, name_hint=upd.name)
    for a in range(k):
        if a not in keep and block[a] != shape[a]:
            raise NotLowerable("ScatterND block along an axis ncnn drops")

    def region(a: int) -> tuple[int, ...]:  # the data cropped to the block along axes < a
        return nc_shape((*block[:a], *shape[a:]), keep)

    regions = [xb]  # top-down: regions[a] is the data cropped along axes < a
    for a in range(k - 1):
        regions.append(_crop(ctx, regions[a], region(a), keep.index(a), int(lo[a]), int(hi[a]))
                       if block[a] != shape[a] else regions[a])  # fmt: skip
    blob = ub
    for a in reversed(range(k)):  # bottom-up: the block placed inside regions[a] along axis a
        if block[a] == shape[a]:
            continue
        ax, nc = keep.index(a), region(a)
        parts = [_crop(ctx, regions[a], nc, ax, 0, int(lo[a]))] if lo[a] > 0 else []
        parts.append(blob)
        if hi[a] < shape[a]:
            parts.append(_crop(ctx, regions[a], nc, ax, int(hi[a]), shape[a]))
        blob = ctx.emit("Concat", parts, nc, {0: ax})
    ctx.bind(out, blob, keep)


def _gather_elements_affine(ctx: Ctx, node: Node, x: Tensor, idx: np.ndarray) -> None:
    """GatherElements of dynamic data along the last axis whose constant indices are
    ``o + a*i + b*j`` (row i, column j, b = +-1, the same for every leading index): the
    relative-to-absolute shift of DeBERTa's disentangled attention. With the rows laid
    end to end (a flat view), row i's window starts at ``o + i*(n + a)``: one Crop of the
    flat view, a Reshape to rows of ``n + a`` and a Crop of the first columns (b = -1: a
    Flip first). Other index patterns have no ncnn layer."""
    axis = int(node.attr("axis", 0))
    axis = axis + x.rank if axis < 0 else axis
    if axis != x.rank - 1 or x.rank < 2 or idx.ndim != x.rank:
        raise NotLowerable("GatherElements of dynamic data other than along the last axis of rows")
    n = int(x.shape[-1])
    rows_x, rows, cols = int(x.shape[-2]), int(idx.shape[-2]), int(idx.shape[-1])
    lead = tuple(int(d) for d in x.shape[:-2])
    if tuple(idx.shape[:-2]) != lead:
        raise NotLowerable("GatherElements indices with other leading dims than the data")
    idx = np.where(idx < 0, idx + n, idx)
    base = idx.reshape(-1, rows, cols)[0]
    o = int(base[0, 0])
    a = int(base[1, 0] - base[0, 0]) if rows > 1 else 0
    b = int(base[0, 1] - base[0, 0]) if cols > 1 else 1
    i, j = np.indices((rows, cols))
    if (b not in (1, -1) or rows > rows_x or not np.all(idx == o + a * i + b * j)
            or base.min() < 0 or base.max() >= n):  # fmt: skip
        raise NotLowerable("GatherElements of dynamic data with indices that are not a shift of rows")
    g = int(np.prod(lead)) if lead else 1
    flat_nc = (g, rows_x * n) if g > 1 else (rows_x * n,)
    ax = len(flat_nc) - 1
    assert x.blob is not None
    blob = ctx.reshape(x.blob, (*flat_nc[:-1], rows_x, n), name_hint=x.name)
    if b == -1:  # columns reversed: j counts up in the flipped rows
        blob = ctx.emit("Flip", [blob], (*flat_nc[:-1], rows_x, n), {0: [ax + 1]})
        o, a = n - 1 - o, -a
    stride = n + a
    if stride < cols:
        raise NotLowerable("GatherElements windows overlap")
    blob = ctx.reshape(blob, flat_nc)
    end = o + rows * stride
    if end > rows_x * n:  # the last window runs past the data: zeros that no index reads
        padded = (*flat_nc[:-1], end)
        pad = end - rows_x * n
        if g > 1:  # Padding pads w of every row: one row per leading index
            blob = ctx.reshape(blob, (g, 1, rows_x * n))
        params = {0: 0, 1: 0, 2: 0, 3: pad, 4: 0, 5: 0.0}
        blob = ctx.emit("Padding", [blob], (g, 1, end) if g > 1 else padded, params)
        blob = ctx.reshape(blob, padded)
        flat_nc = padded
    blob = _crop(ctx, blob, flat_nc, ax, o, end)
    win = (*flat_nc[:-1], rows, stride)
    blob = _crop(ctx, ctx.reshape(blob, win), win, len(win) - 1, 0, cols)
    out = node.outputs[0]
    keep = default_keep(ctx.out_shape())
    ctx.bind(out, blob, keep)
