"""merge_parallel_convs on tiny graphs, one case per test: the structure after the pass,
``modified``, and onnxruntime's outputs of the original graph as the reference."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mconv.passes import get_pass, optimize
from tests.models import make_graph_model, random_feeds_for, run_ort

C = 8
RNG = np.random.default_rng(0)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _conv(name: str, x: str, out: str, k: tuple[int, int], pads, group: int = 1, **kw) -> tuple:
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], name=name, pads=list(pads), group=group, **kw)
    return node, [_w(f"{name}_w", C, C // group, *k), _w(f"{name}_b", C)]


def _bn(name: str, x: str, out: str) -> tuple:
    node = helper.make_node("BatchNormalization", [x, f"{name}_s", f"{name}_o", f"{name}_m", f"{name}_v"], [out],
                            name=name)  # fmt: skip
    var = numpy_helper.from_array(RNG.uniform(0.5, 2.0, C).astype(np.float32), f"{name}_v")
    return node, [_w(f"{name}_s", C), _w(f"{name}_o", C), _w(f"{name}_m", C), var]


def _model(parts, nodes, out_shape=(1, C, 10, 12), in_shape=(1, C, 10, 12)) -> onnx.ModelProto:
    inits = [t for _, ts in parts for t in ts]
    vi = helper.make_tensor_value_info
    return make_graph_model(
        [n for n, _ in parts] + nodes, [vi("x", TensorProto.FLOAT, list(in_shape))],
        [vi("y", TensorProto.FLOAT, list(out_shape))], inits,
    )  # fmt: skip


def _run(m: onnx.ModelProto):
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    result, _ = get_pass("merge_parallel_convs")(m)
    feeds = random_feeds_for(ref, seed=3)
    want, got = run_ort(ref, feeds), run_ort(result.model, feeds)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape
        assert float(np.abs(a - b).max()) <= 1e-5 * max(float(np.abs(a).max()), 1.0)
    return result, [n.op_type for n in result.model.graph.node]


def test_repvgg_block_becomes_one_conv():
    # RepVGG: 3x3 conv + 1x1 conv + BatchNormalization(x), summed.
    parts = [
        _conv("k3", "x", "a", (3, 3), [1, 1, 1, 1]),
        _conv("k1", "x", "b", (1, 1), [0, 0, 0, 0]),
        _bn("id", "x", "c"),
    ]
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "c"], ["y"])]
    result, ops = _run(_model(parts, nodes))
    assert result.modified and ops == ["Conv"]
    conv = result.model.graph.node[0]
    assert {a.name: list(a.ints) for a in conv.attribute if a.ints}["kernel_shape"] == [3, 3]


def test_mobileone_depthwise_chain_from_a_constant_zero():
    # timm MobileOne: out = 0; out += scale 1x1; out += identity BN; out += k x (3x3); all depthwise.
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    parts = [_conv("s", "x", "s", (1, 1), [0] * 4, group=C), _bn("id", "x", "i")]
    parts += [_conv(f"k{j}", "x", f"k{j}", (3, 3), [1] * 4, group=C) for j in range(3)]
    nodes = [helper.make_node("Add", ["s", "zero"], ["t0"]), helper.make_node("Add", ["t0", "i"], ["t1"])]
    nodes += [helper.make_node("Add", [f"t{j + 1}", f"k{j}"], [f"t{j + 2}"]) for j in range(2)]
    nodes += [helper.make_node("Add", ["t3", "k2"], ["y"])]
    m = _model(parts, nodes)
    m.graph.initializer.append(zero)
    result, ops = _run(m)
    assert ops == ["Conv"]
    assert [a.i for a in result.model.graph.node[0].attribute if a.name == "group"] == [C]


def test_asymmetric_kernels_align_by_padding():
    # ACNet: 3x3 + 1x3 + 3x1 read the same positions once each is placed by its padding.
    parts = [
        _conv("sq", "x", "a", (3, 3), [1, 1, 1, 1]),
        _conv("hor", "x", "b", (1, 3), [0, 1, 0, 1]),
        _conv("ver", "x", "c", (3, 1), [1, 0, 1, 0]),
    ]
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Add", ["c", "ab"], ["y"])]
    _, ops = _run(_model(parts, nodes))
    assert ops == ["Conv"]


def test_dilated_kernel_keeps_its_centre():
    parts = [_conv("d", "x", "a", (3, 3), [2] * 4, dilations=[2, 2]), _conv("p", "x", "b", (1, 1), [0] * 4)]
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    _, ops = _run(_model(parts, nodes))
    assert ops == ["Conv"]


def test_strided_pair_merges_but_identity_needs_stride_one():
    parts = [
        _conv("a", "x", "a", (3, 3), [1] * 4, strides=[2, 2]),
        _conv("b", "x", "b", (1, 1), [0] * 4, strides=[2, 2]),
    ]
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    _, ops = _run(_model(parts, nodes, out_shape=(1, C, 5, 6)))
    assert ops == ["Conv"]
    # A stride-2 conv plus x is never merged (on a 1x1 map, where the shapes agree).
    parts = [_conv("a", "x", "a", (1, 1), [0] * 4, strides=[2, 2])]
    m = _model(parts, [helper.make_node("Add", ["a", "x"], ["y"])], in_shape=(1, C, 1, 1), out_shape=(1, C, 1, 1))
    result, _ = get_pass("merge_parallel_convs")(m)
    assert not result.modified


def test_conv_plus_its_own_input():
    parts = [_conv("a", "x", "a", (3, 3), [1] * 4)]
    _, ops = _run(_model(parts, [helper.make_node("Add", ["x", "a"], ["y"])]))
    assert ops == ["Conv"]


def test_per_channel_constant_joins_the_bias_but_a_spatial_one_does_not():
    bias = numpy_helper.from_array(RNG.standard_normal((1, C, 1, 1)).astype(np.float32), "cb")
    spatial = numpy_helper.from_array(RNG.standard_normal((1, 1, 10, 12)).astype(np.float32), "sp")
    m = _model([_conv("a", "x", "a", (3, 3), [1] * 4)], [helper.make_node("Add", ["a", "cb"], ["y"])])
    m.graph.initializer.append(bias)
    _, ops = _run(m)
    assert ops == ["Conv"]
    m = _model([_conv("a", "x", "a", (3, 3), [1] * 4)], [helper.make_node("Add", ["a", "sp"], ["y"])])
    m.graph.initializer.append(spatial)
    result, ops = _run(m)
    assert not result.modified and ops == ["Conv", "Add"]


def test_residual_add_of_different_inputs_is_left_alone():
    # ResNet: conv2(relu(conv1(x))) + x: the conv does not read x.
    parts = [_conv("c1", "x", "h", (3, 3), [1] * 4), _conv("c2", "r", "a", (3, 3), [1] * 4)]
    nodes = [helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Add", ["a", "x"], ["y"])]
    result, ops = _run(_model(parts, nodes))
    assert not result.modified and ops.count("Conv") == 2


def test_branch_read_elsewhere_is_not_merged():
    parts = [_conv("a", "x", "a", (3, 3), [1] * 4), _conv("b", "x", "b", (1, 1), [0] * 4)]
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["s", "a"], ["y"])]
    result, _ = _run(_model(parts, nodes))
    assert not result.modified


def test_one_sided_padding_places_the_small_kernel_off_centre():
    # A 3x3 padded only before reads o-2..o; the 1x1 reads o: its tap is the 3x3's last one.
    parts = [_conv("a", "x", "a", (3, 3), [2, 2, 0, 0]), _conv("b", "x", "b", (1, 1), [0] * 4)]
    _, ops = _run(_model(parts, [helper.make_node("Add", ["a", "b"], ["y"])]))
    assert ops == ["Conv"]


def test_taps_that_never_meet_are_not_merged():
    # Dilation 2 with pads (3, 1) reads o-3, o-1, o+1; the 1x1 reads o: no common grid.
    parts = [_conv("a", "x", "a", (3, 3), [3, 3, 1, 1], dilations=[2, 2]), _conv("b", "x", "b", (1, 1), [0] * 4)]
    result, ops = _run(_model(parts, [helper.make_node("Add", ["a", "b"], ["y"])]))
    assert not result.modified and ops.count("Conv") == 2


def test_default_pipeline_folds_a_batchnorm_after_the_merged_sum():
    # RepViT's RepVggDw: BN(conv3x3(x) + conv1x1(x) + x); the BN then follows one Conv.
    parts = [_conv("a", "x", "a", (3, 3), [1] * 4, group=C), _conv("b", "x", "b", (1, 1), [0] * 4, group=C)]
    parts.append(_bn("post", "s2", "y"))
    nodes = [helper.make_node("Add", ["a", "b"], ["s1"]), helper.make_node("Add", ["s1", "x"], ["s2"])]
    m = _model(parts, nodes)
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    out, _ = optimize(m)
    assert [n.op_type for n in out.graph.node] == ["Conv"]
    feeds = random_feeds_for(ref, seed=4)
    np.testing.assert_allclose(run_ort(out, feeds)[0], run_ort(ref, feeds)[0], rtol=1e-4, atol=1e-4)


def test_fastvit_repmixer_becomes_one_conv():
    # FastViT's RepMixer in train form: x + gamma * (mixer(x) - norm(x)), depthwise.
    gamma = numpy_helper.from_array(RNG.standard_normal((C, 1, 1)).astype(np.float32), "gamma")
    parts = [_conv("mix", "x", "m", (3, 3), [1] * 4, group=C), _bn("norm", "x", "n")]
    nodes = [
        helper.make_node("Sub", ["m", "n"], ["d"]),
        helper.make_node("Mul", ["d", "gamma"], ["g"]),
        helper.make_node("Add", ["x", "g"], ["y"]),
    ]
    m = _model(parts, nodes)
    m.graph.initializer.append(gamma)
    result, ops = _run(m)
    assert result.modified and ops == ["Conv"]


def test_subtraction_in_either_order():
    for order in (["a", "x"], ["x", "a"]):
        m = _model([_conv("a", "x", "a", (3, 3), [1] * 4)], [helper.make_node("Sub", order, ["y"])])
        _, ops = _run(m)
        assert ops == ["Conv"]


def test_per_channel_scale_folds_but_a_tensor_product_does_not():
    s = numpy_helper.from_array(RNG.standard_normal((1, C, 1, 1)).astype(np.float32), "s")
    m = _model([_conv("a", "x", "a", (3, 3), [1] * 4)], [helper.make_node("Mul", ["s", "a"], ["y"])])
    m.graph.initializer.append(s)
    _, ops = _run(m)
    assert ops == ["Conv"]
    # Conv(x) * x (a gate) is not linear in x.
    m = _model([_conv("a", "x", "a", (3, 3), [1] * 4)], [helper.make_node("Mul", ["a", "x"], ["y"])])
    result, ops = _run(m)
    assert not result.modified and ops == ["Conv", "Mul"]
