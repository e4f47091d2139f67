"""The TensorRT target's options (declared once; see :mod:`mconv.targets.options`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mconv.errors import UsageError
from mconv.specs import ShapeProfile, parse_profile
from mconv.targets.base import TargetOptions, ignore_option, option
from mconv.targets.qdq import calib_method_option


def profile_entry(value: Any) -> Any:
    """One ``profiles`` entry: ``NAME:MIN:OPT:MAX`` text, a recipe's ``{input, min, opt, max}``,
    a ShapeProfile, or a list of those (one optimisation profile of several)."""
    if isinstance(value, ShapeProfile):
        return value
    if isinstance(value, str):
        return parse_profile(value)
    if isinstance(value, dict):
        keys = {"input", "min", "opt", "max"}
        if set(value) != keys:
            raise UsageError(f"profiles: {value}: give exactly input, min, opt and max")
        dims = ["x".join(str(d) for d in value[k]) for k in ("min", "opt", "max")]
        return parse_profile(":".join([str(value["input"]), *dims]))
    if isinstance(value, (list, tuple)):
        return [profile_entry(v) for v in value]
    raise UsageError(f"profiles: {value!r}: expected NAME:MIN:OPT:MAX or {{input, min, opt, max}}")


def workspace_size(value: Any) -> int:
    """Bytes from ``2G``-style text or a number; must be positive."""
    from mconv.limits import parse_size

    size = parse_size(value, "--workspace") if isinstance(value, str) else int(value)
    if size <= 0:
        raise UsageError(f"--workspace {value}: the workspace must be larger than 0 bytes")
    return size


@dataclass
class TensorRTOptions(TargetOptions):
    profiles: list[Any] = option(
        [],
        help="Optimisation profile of a dynamic input, NAME:MIN:OPT:MAX "
        "(repeat per input; in recipes a list of {input, min, opt, max}, or a list of such lists "
        "for several profiles).",
        flag="--shape",
        parse=profile_entry,
        metavar="NAME:MIN:OPT:MAX",
    )
    workspace: int | None = option(
        None, help="Builder workspace, e.g. 2G.", flag="--workspace", parse=workspace_size, metavar="SIZE"
    )
    timing_cache: str | None = option(
        None,
        help="Timing cache file (read if present, written after the build).",
        flag="--timing-cache",
        path=True,
        metavar="FILE",
    )
    plugins: list[str] = option(
        [], help="Plugin library (.so) to load (repeat per library).", path=True, metavar="FILE"
    )
    calib_method: str = calib_method_option("minmax")
    ignore: list[str] = ignore_option()
