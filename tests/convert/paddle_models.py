"""Writes a small Paddle CNN with paddle.jit.save, plus a sample input and the model's own
(dygraph) output on it, for tests/convert/test_paddle.py.

    python tests/convert/paddle_models.py OUT_PREFIX     # PIR: OUT_PREFIX.json + .pdiparams
    FLAGS_enable_pir_api=0 python ... OUT_PREFIX         # older: OUT_PREFIX.pdmodel + .pdiparams

Run as a script (in a child process): the program format is fixed when paddle is imported.
"""

from __future__ import annotations

import sys

import numpy as np
import paddle
from paddle import nn

SHAPE = (1, 3, 32, 32)


class Block(nn.Layer):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(cin, cout, 3, stride=stride, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(cout)
        self.conv2 = nn.Conv2D(cout, cout, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(cout)
        self.down = nn.Conv2D(cin, cout, 1, stride=stride) if (cin != cout or stride != 1) else None

    def forward(self, x):
        y = nn.functional.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nn.functional.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Layer):
    """ResNet-18's pattern (stem, residual blocks, pooling, classifier) at a test's size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2D(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2D(2)
        self.block1 = Block(8, 8, 1)
        self.block2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = self.pool(nn.functional.relu(self.stem(x)))
        y = self.block2(self.block1(y))
        y = nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        return nn.functional.softmax(self.fc(y), axis=-1)


def main(prefix: str) -> None:
    paddle.seed(0)
    net = TinyResNet()
    for p in net.parameters():  # non-trivial BatchNorm statistics
        if p.name.endswith(("_mean", "_variance")) or "batch_norm" in p.name:
            p.set_value(paddle.rand(p.shape) + 0.5)
    net.eval()
    x = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    y = net(paddle.to_tensor(x)).numpy()
    paddle.jit.save(net, prefix, input_spec=[paddle.static.InputSpec(list(SHAPE), "float32", "x")])
    np.savez(prefix + ".sample.npz", x=x, y=y)


if __name__ == "__main__":
    main(sys.argv[1])
