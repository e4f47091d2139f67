"""TFLite model metadata for MediaPipe's Tasks (image classifiers), written with
``flatbuffers`` from the public ``metadata_schema.fbs`` (file identifier ``M001``).

What MediaPipe's ImageClassifier reads:
    ModelMetadata.subgraph_metadata[0].input_tensor_metadata[0]:
        content = ImageProperties(color_space RGB)
        process_units = [NormalizationOptions(mean, std)]  (pixel units, 0..255)
    output_tensor_metadata[0].associated_files = [labels.txt as TENSOR_AXIS_LABELS]
The labels file itself is appended to the .tflite as a zip archive (the model
stays a valid flatbuffer; the metadata names the zip member). The Model's
``metadata`` table gets "TFLITE_METADATA" (this buffer) and "min_runtime_version".

Field slots are the declaration order in the schema; a union takes two (type, value).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import flatbuffers

METADATA_IDENTIFIER = b"M001"
# union ContentProperties: FeatureProperties 1, ImageProperties 2, ...
_IMAGE_PROPERTIES = 2
# union ProcessUnitOptions: NormalizationOptions 1, ...
_NORMALIZATION = 1
_RGB = 1
_TENSOR_AXIS_LABELS = 2


def _table(b: flatbuffers.Builder, nfields: int, offsets=(), bytes_=()) -> int:
    """A table: ``offsets`` are (slot, uoffset), ``bytes_`` (slot, int8 value)."""
    b.StartObject(nfields)
    for slot, off in offsets:
        if off is not None:
            b.PrependUOffsetTRelativeSlot(slot, off, 0)
    for slot, v in bytes_:
        b.PrependInt8Slot(slot, v, 0)
    return b.EndObject()


def _offsets(b: flatbuffers.Builder, items: list[int]) -> int:
    b.StartVector(4, len(items), 4)
    for v in reversed(items):
        b.PrependUOffsetTRelative(v)
    return b.EndVector()


def _floats(b: flatbuffers.Builder, values) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(list(values)):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _input_meta(b: flatbuffers.Builder, name: str, mean, std) -> int:
    norm = _table(b, 2, [(0, _floats(b, mean)), (1, _floats(b, std))])
    unit = _table(b, 2, [(1, norm)], [(0, _NORMALIZATION)])
    props = _table(b, 2, [], [(0, _RGB)])
    content = _table(b, 3, [(1, props)], [(0, _IMAGE_PROPERTIES)])
    return _table(b, 7, [(0, b.CreateString(name)), (3, content), (4, _offsets(b, [unit]))])


def _output_meta(b: flatbuffers.Builder, name: str, labels: str | None) -> int:
    files = None
    if labels:
        f = _table(b, 5, [(0, b.CreateString(labels)), (1, b.CreateString("class labels"))], [(2, _TENSOR_AXIS_LABELS)])
        files = _offsets(b, [f])
    content = _table(b, 3, [(1, _table(b, 0))], [(0, 1)])  # FeatureProperties
    return _table(b, 7, [(0, b.CreateString(name)), (3, content), (6, files)])


def image_classifier_metadata(
    name: str, input_name: str, output_name: str, mean, std, labels: str | None = None
) -> bytes:
    """The ModelMetadata flatbuffer (``mean``/``std`` in pixel units, 0..255)."""
    b = flatbuffers.Builder(1024)
    inp = _input_meta(b, input_name, mean, std)
    out = _output_meta(b, output_name, labels)
    sub = _table(b, 10, [(2, _offsets(b, [inp])), (3, _offsets(b, [out]))])
    model = _table(
        b,
        8,
        [
            (0, b.CreateString(name)),
            (1, b.CreateString("converted by mconv")),
            (3, _offsets(b, [sub])),
            (7, b.CreateString("1.0.0")),
        ],
    )
    b.Finish(model, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def runtime_version() -> bytes:
    """The "min_runtime_version" buffer TFLite's converter writes (a padded string)."""
    return b"1.14.0".ljust(16, b"\0")


def append_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """``model`` with ``files`` appended as a zip archive (how TFLite packs associated files)."""
    buf = io.BytesIO(model)
    buf.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def read_labels(path: str) -> bytes:
    text = Path(path).read_text(encoding="utf-8")
    return ("\n".join(line.strip() for line in text.splitlines() if line.strip()) + "\n").encode()
