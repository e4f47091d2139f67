"""TinyNet, the torch model defined in this repository, and its seeded checkpoint.

The recipes ``tinynet.yaml`` and ``tinynet_trt.yaml`` use ``TinyNet`` as the factory and
``make_checkpoint`` to write its weights at run time, so no binary checkpoint is committed.
``python recipes/models/tinynet.py OUT.pt`` writes the same checkpoint by hand.
"""

from __future__ import annotations

import sys

import torch

# The model is the one `make demo` exports; it lives in the package so both share it.
from mconv.demo import TinyNet, make_model

__all__ = ["TinyNet", "make_checkpoint"]


def make_checkpoint(path: str) -> None:
    """Write a seeded state_dict (with non-trivial BatchNorm statistics) to ``path``."""
    torch.save(make_model().state_dict(), path)


if __name__ == "__main__":
    make_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "tinynet.pt")
