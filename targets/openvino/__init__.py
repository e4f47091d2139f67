"""OpenVINO target: ONNX -> OpenVINO IR (``<stem>.xml`` + ``<stem>.bin``), INT8 via NNCF.

``convert`` wraps OpenVINO's conversion, shapes, ``--ignore`` and NNCF; ``files``
reads IR files; ``runner`` runs them; ``target`` is the registered target.
"""

from mconv.targets.openvino.convert import canonicalize_names, int8_warnings
from mconv.targets.openvino.runner import OpenVinoRunner
from mconv.targets.openvino.target import OpenVinoTarget

__all__ = ["OpenVinoRunner", "OpenVinoTarget", "canonicalize_names", "int8_warnings"]
