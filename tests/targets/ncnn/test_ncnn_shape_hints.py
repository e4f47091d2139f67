"""Shape hints (param 30, ``-23330=``) on 3x3 stride-1 Convolutions.

ncnn's x86 Convolution prepares the Winograd variant for the hinted size (F(2,3) for a
64-channel 8x8 map, where it would otherwise prepare F(4,3) only). The hint must leave
every CPU result right: at the build's size, and at another size (the forward pass then
falls back to the variant it has), checked against torch at both sizes.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ncnn", reason="the ncnn wheel is needed to run converted models")

from mconv.targets.base import BuildOptions  # noqa: E402
from mconv.targets.ncnn.param import read_param  # noqa: E402
from mconv.targets.ncnn.target import NcnnTarget  # noqa: E402


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        c = torch.nn.Conv2d
        self.stem = c(3, 64, 3, stride=2, padding=1)  # stride 2: no hint
        self.a = c(64, 64, 3, padding=1)
        self.b = c(64, 64, 3, padding=1)
        self.d = c(64, 16, 3, padding=2, dilation=2)  # dilated: no hint
        self.head = c(16, 8, 1)  # 1x1: no hint

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.a(y)) + y
        return self.head(torch.relu(self.d(self.b(y))))


def _export(net, size):
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, size, size),), buf, input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return _Net().eval()


def _run_ncnn(art, mat):
    """ncnn itself on the CPU, fp32, at whatever size ``mat`` has (mconv's runner holds a
    model to its build shape)."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    net.opt.num_threads = 1
    assert net.load_param(str(art.main)) == 0 and net.load_model(str(art.main.with_suffix(".bin"))) == 0
    with net.create_extractor() as ex:
        ex.input(art.meta["inputs"][0]["blob"], ncnn.Mat(np.ascontiguousarray(mat)).clone())
        ret, out = ex.extract(art.meta["outputs"][0]["blob"])
        assert ret == 0
        return np.array(out).copy()


def _hints(param_text):
    return {layer.name: layer.params.get("-23330") for layer in read_param(param_text) if layer.type == "Convolution"}


@pytest.mark.parametrize("run_size", [16, 22])
def test_hinted_convolutions_stay_right_at_the_build_size_and_another(net, tmp_path, run_size):
    art = NcnnTarget().write(_export(net, 16), tmp_path, "m", BuildOptions())
    hinted = {name: v for name, v in _hints(art.main.read_text()).items() if v}
    # exactly the two 3x3 stride-1 convolutions, with their 8x8x64 outputs: dims, w, h, d, c
    assert sorted(hinted.values()) == ["5,3,8,8,0,64", "5,3,8,8,0,64"], _hints(art.main.read_text())
    x = np.random.default_rng(0).standard_normal((1, 3, run_size, run_size)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    out = _run_ncnn(art, x[0]).reshape(ref.shape)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))


def test_shape_hints_false_writes_none(net, tmp_path):
    model = _export(net, 16)
    options = BuildOptions(target=NcnnTarget().make_options({"shape_hints": False}))
    art = NcnnTarget().write(model, tmp_path, "m", options)
    assert "-23330" not in art.main.read_text()
    assert set(_hints(art.main.read_text()).values()) == {None}
