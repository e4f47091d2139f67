"""Recognising Caffe files by content, and finding a net's other half by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

from mconv.errors import InputError

_HEAD = 64 * 1024
_PROTOTXT = re.compile(r"(?m)^\s*(?:layers?\s*:?\s*[{<]|input\s*:\s*[\"'])")
# NetParameter's fields and the wire types they are written with (input_dim: plain or packed).
_NET_FIELDS = {1: {2}, 2: {2}, 3: {2}, 4: {0, 2}, 5: {0}, 6: {2}, 7: {0}, 8: {2}, 100: {2}}
_LAYER_FIELDS = {2, 100}
_DEPLOY_AFFIXES = ("_deploy", "-deploy", ".deploy", "deploy_", "deploy-")


def is_prototxt(path: Path) -> bool:
    """A text net description: protobuf text with ``layer {``, ``layers {`` or ``input:`` lines."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        return False
    if b"\x00" in head:
        return False
    text = head.decode("utf-8", errors="ignore")
    text = re.sub(r"#[^\n]*", "", text)
    return bool(_PROTOTXT.search(text))


def _varint(f: BinaryIO) -> int | None:
    value = 0
    for shift in range(0, 70, 7):
        b = f.read(1)
        if not b:
            return None
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
    return None


def _plausible_layer(f: BinaryIO, length: int) -> bool:
    """The first field of a layer message: a known wire type and a field number."""
    start = f.tell()
    tag = _varint(f) if length else 0
    f.seek(start + length)
    return tag is not None and tag >> 3 > 0 and tag & 7 in (0, 1, 2, 5)


def is_caffemodel(path: Path) -> bool:
    """A binary NetParameter: its first top-level fields are NetParameter's, one of them a layer.

    Only the first fields are walked (lengths are skipped, not read), so a 500 MB file costs a
    few reads. ONNX files start with ``ir_version`` (field 1 as a varint) and are rejected.
    """
    try:
        size = path.stat().st_size
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return False
    with f:
        seen_layer = False
        for _ in range(32):
            if f.tell() == size:
                return seen_layer
            tag = _varint(f)
            if tag is None or tag & 7 not in _NET_FIELDS.get(tag >> 3, ()):
                return False
            if tag & 7 == 0:
                if _varint(f) is None:
                    return False
                continue
            length = _varint(f)
            if length is None or f.tell() + length > size:
                return False
            if tag >> 3 in _LAYER_FIELDS:
                if not _plausible_layer(f, length):
                    return False
                seen_layer = True
            else:
                f.seek(length, 1)
        return seen_layer


def detect(path: Path) -> bool:
    """Whether ``path`` is a Caffe prototxt or caffemodel (by content)."""
    path = Path(path)
    return path.is_file() and (is_prototxt(path) or is_caffemodel(path))


def _weights_candidates(prototxt: Path) -> list[Path]:
    folder, stem = prototxt.parent, prototxt.stem
    names = [stem]
    for affix in _DEPLOY_AFFIXES:
        low = stem.lower()
        if low.endswith(affix):
            names.append(stem[: -len(affix)])
        if low.startswith(affix):
            names.append(stem[len(affix) :])
    found = [folder / f"{n}.caffemodel" for n in names if n and (folder / f"{n}.caffemodel").is_file()]
    if found:
        return found[:1]
    if stem.lower().startswith("deploy") or stem.lower().endswith("deploy"):
        models = sorted(folder.glob("*.caffemodel"))
        if len(models) == 1:
            return models
    return []


def _prototxt_candidates(caffemodel: Path) -> list[Path]:
    folder, stem = caffemodel.parent, caffemodel.stem
    names = [f"{stem}.prototxt", f"{stem}_deploy.prototxt", f"{stem}.deploy.prototxt", "deploy.prototxt"]
    return [folder / n for n in names if (folder / n).is_file()][:1]


def _existing(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path}: no such file (given as the {what})")
    return path


def find_pair(path: Path, weights: Path | None) -> tuple[Path, Path]:
    """(prototxt, caffemodel) from either half and the optional ``--weights``.

    Raises:
        InputError: when the other half is not given and not found beside the file by name,
            or when the files are not what they are given as.
    """
    path = _existing(Path(path), "model")
    if weights is not None:
        weights = _existing(Path(weights), "--weights file")
    if is_caffemodel(path):
        if weights is not None and is_prototxt(weights):
            return weights, path
        if weights is not None:
            raise InputError(f"{path}: a .caffemodel was given as the model and {weights} as --weights; give the "
                             "net's .prototxt as the model and the .caffemodel with --weights")  # fmt: skip
        found = _prototxt_candidates(path)
        if not found:
            raise InputError(
                f"{path}: Caffe weights without their net description: no {path.stem}.prototxt or deploy.prototxt "
                "beside it; give the .prototxt as the model and this file with --weights"
            )
        return found[0], path
    if not is_prototxt(path):
        raise InputError(f"{path}: neither a Caffe .prototxt (text net) nor a .caffemodel (binary weights)")
    if weights is not None:
        if not is_caffemodel(weights):
            raise InputError(f"{weights}: given with --weights but not a .caffemodel (a binary Caffe NetParameter)")
        return path, weights
    found = _weights_candidates(path)
    if not found:
        raise InputError(f"{path}: a Caffe net description without weights: no {path.stem}.caffemodel beside it; "
                         "give the weights with --weights NET.caffemodel")  # fmt: skip
    return path, found[0]
