"""mconv: one tool from PyTorch and ONNX to deployment runtimes (see ``mconv targets``),
with every artifact verified by the real runtime.

The Python API (:mod:`mconv.api`): ``mconv.export``, ``mconv.optimize``, ``mconv.build``,
``mconv.verify`` and ``mconv.bench`` return typed results (:mod:`mconv.results`) and raise
the errors of :mod:`mconv.errors`. Importing this package imports no heavy framework; the
API loads what a call needs.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "bench", "build", "export", "optimize", "verify"]

_API = ("export", "optimize", "build", "verify", "bench")


def __getattr__(name: str):
    if name in _API:
        from mconv import api

        return getattr(api, name)
    raise AttributeError(f"module 'mconv' has no attribute {name!r}")
