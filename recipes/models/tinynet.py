"""TinyNet, the torch model defined in this repository, and its seeded checkpoint.

The recipes ``tinynet.yaml`` and ``tinynet_trt.yaml`` use ``TinyNet`` as the factory and
``make_checkpoint`` to write its weights at run time, so no binary checkpoint is committed.
``python recipes/models/tinynet.py OUT.pt`` writes the same checkpoint by hand.
"""

from __future__ import annotations

import sys

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv-bn-relu stem, a depthwise residual block, global pool and a classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 16, 3, 1, 1, groups=16),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 1),
            nn.BatchNorm2d(16),
        )
        self.head = nn.Sequential(
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x)


def make_checkpoint(path: str) -> None:
    """Write a seeded state_dict (with non-trivial BatchNorm statistics) to ``path``."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), path)


if __name__ == "__main__":
    make_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "tinynet.pt")
