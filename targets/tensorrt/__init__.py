"""TensorRT target: ONNX -> ``<stem>.engine`` + ``<stem>.engine.json`` (see ``engine``).

``support`` holds the preflight (op table, profiles), ``engine`` the builds, metadata
and runner, ``target`` the registered target.
"""

from mconv.targets.tensorrt.engine import (
    EngineConfig,
    build_with_python,
    build_with_trtexec,
    check_engine_compat,
    compare_metadata,
    engine_config,
    parse_trtexec_version,
    runtime_missing_reason,
    sidecar_path,
    trtexec_command,
)
from mconv.targets.tensorrt.support import Finding, preflight_report
from mconv.targets.tensorrt.target import TensorRTRunner, TensorRTTarget

__all__ = [
    "EngineConfig",
    "Finding",
    "TensorRTRunner",
    "TensorRTTarget",
    "build_with_python",
    "build_with_trtexec",
    "check_engine_compat",
    "compare_metadata",
    "engine_config",
    "parse_trtexec_version",
    "preflight_report",
    "runtime_missing_reason",
    "sidecar_path",
    "trtexec_command",
]
