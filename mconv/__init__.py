"""mconv: one tool from PyTorch and ONNX to deployment runtimes (see ``mconv targets``),
with every artifact verified by the real runtime.

The Python API (:mod:`mconv.api`): ``mconv.export``, ``mconv.optimize``, ``mconv.build``,
``mconv.verify`` and ``mconv.bench`` return typed results (:mod:`mconv.results`) and raise
the errors of :mod:`mconv.errors`. Importing this package imports no heavy framework; the
API loads what a call needs.
"""

import os as _os
import sys as _sys

# Dependencies that phone home are stopped before any mconv module imports them (children
# import mconv first too, and inherit the environment):
# - onnxruntime (1.32 on Linux) starts 1DS telemetry at import: a device id and an event
#   store under ~/.cache/Microsoft, uploaded over HTTPS. Off unless the user set the variable.
# - OpenVINO (its converter, even `import openvino`) and NNCF send Google Analytics events
#   through `openvino_telemetry`, with a client id and counters under ~/intel; consent is
#   assumed when no consent file exists. Made unimportable here (unless imported already),
#   both fall back to their own no-op stubs.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
_sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

__version__ = "0.1.0"

__all__ = ["__version__", "bench", "build", "export", "optimize", "verify"]

_API = ("export", "optimize", "build", "verify", "bench")


def __getattr__(name: str):
    if name in _API:
        from mconv import api

        return getattr(api, name)
    raise AttributeError(f"module 'mconv' has no attribute {name!r}")
