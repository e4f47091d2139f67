"""Reading OpenVINO IR files: the root tag, the precision the weights say, the inputs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from mconv.graphinfo import TensorInfo
from mconv.targets.base import dims_of

# ---------------------------------------------------------------------------
# Recognising an IR on disk


def xml_root_tag(path: Path) -> str | None:
    try:
        for _event, elem in ET.iterparse(path, events=("start",)):
            return elem.tag
    except (ET.ParseError, OSError):
        return None
    return None


def ir_precision(xml: Path) -> str:
    """Guess an IR's precision: FakeQuantize or 8-bit weights -> int8, f16 weights -> fp16."""
    precision = "fp32"
    for _event, elem in ET.iterparse(xml, events=("start",)):
        if elem.tag != "layer" and elem.tag != "data":
            continue
        if elem.tag == "layer" and elem.get("type") == "FakeQuantize":
            return "int8"
        et = elem.get("element_type")
        if et in ("i8", "u8") and elem.tag == "data":
            return "int8"
        if et == "f16":
            precision = "fp16"
    return precision


_IR_TYPES = {
    "f32": "float32",
    "f16": "float16",
    "f64": "float64",
    "i64": "int64",
    "i32": "int32",
    "i8": "int8",
    "u8": "uint8",
    "boolean": "bool",
}


def ir_inputs(xml: Path) -> list[TensorInfo]:
    """The Parameter layers of an IR: first tensor name, shape (None dims are dynamic), dtype."""
    out = []
    for layer in ET.parse(xml).getroot().iter("layer"):
        if layer.get("type") != "Parameter":
            continue
        data = layer.find("data")
        port = layer.find("output/port")
        names = (port.get("names") if port is not None else None) or layer.get("name") or ""
        shape = data.get("shape") if data is not None else None
        dtype = _IR_TYPES.get(data.get("element_type", "f32") if data is not None else "f32", "float32")
        dims = None if shape is None else dims_of(shape.split(",")) if shape else ()
        out.append(TensorInfo(names.split(",")[0].strip(), dims, dtype))
    return out
