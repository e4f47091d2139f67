"""The one .param reader: layers, graph inputs/outputs and Input shapes, on hand-written text."""

from mconv.targets.ncnn.param import param_inputs, param_io, read_param

PARAM = """7767517
4 4
Input            in0    0 1 in0 0=8 1=6 2=3
Convolution      conv   1 1 in0 c0 0=4 1=3 4=1 5=1 6=108
Split            split  1 2 c0 c1 c2
BinaryOp         add    2 1 c1 c2 out0 0=0
"""


def test_read_param_layers_blobs_and_params():
    layers = read_param(PARAM)
    assert [(layer.type, layer.name) for layer in layers] == [
        ("Input", "in0"),
        ("Convolution", "conv"),
        ("Split", "split"),
        ("BinaryOp", "add"),
    ]
    assert layers[2].inputs == ["c0"] and layers[2].outputs == ["c1", "c2"]
    assert layers[1].params == {"0": "4", "1": "3", "4": "1", "5": "1", "6": "108"}


def test_param_io_inputs_and_unread_blobs():
    assert param_io(PARAM) == (["in0"], ["out0"])


def test_param_inputs_shape_is_batch_then_c_h_w():
    (info,) = param_inputs(PARAM)
    assert info.name == "in0" and info.shape == (1, 3, 6, 8) and info.dtype == "float32"


def test_malformed_lines_are_skipped():
    assert [layer.name for layer in read_param("7767517\n2 2\nInput in0 x 1 in0\nReLU r 1 1 in0 out\n")] == ["r"]


def test_an_input_layer_without_a_shape_has_an_unknown_shape():
    # pnnx writes `Input in0 0 1 in0` with no shape: unknown, not a one-element tensor.
    (info,) = param_inputs(PARAM.replace(" 0=8 1=6 2=3", ""))
    assert info.name == "in0" and info.shape is None
