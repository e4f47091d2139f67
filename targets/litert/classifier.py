"""The ``metadata=image_classifier`` option: checks the model fits MediaPipe's
ImageClassifier and builds the metadata buffers (see :mod:`.metadata`)."""

from __future__ import annotations

from pathlib import Path

from mconv.errors import InputError, UsageError
from mconv.targets.litert.metadata import image_classifier_metadata, read_labels, runtime_version


def _triple(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 3):
        raise UsageError(f"--option {option}={text}: give 1 or 3 comma-separated numbers, e.g. 0.485,0.456,0.406")
    return values * 3 if len(values) == 1 else values


def classifier_metadata(meta: dict, opts, name: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(Model.metadata entries, associated files) for an image classifier.

    Raises:
        UsageError: the model is not one image in, one score vector out.
        InputError: the labels file is missing or has the wrong number of lines.
    """
    ins, outs = meta["inputs"], meta["outputs"]
    if len(ins) != 1 or len(ins[0]["shape"]) != 4 or ins[0]["shape"][3] not in (1, 3):
        raise UsageError(
            "--option metadata=image_classifier needs one image input of shape N x C x H x W with 1 or 3 "
            f"channels; this model takes {[i['shape'] for i in ins]}"
        )
    if len(outs) != 1 or len(outs[0]["shape"]) != 2:
        raise UsageError(
            "--option metadata=image_classifier needs one output of shape N x classes; "
            f"this model gives {[o['shape'] for o in outs]}"
        )
    mean = [v * 255.0 for v in _triple(opts.mean, "mean")]
    std = [v * 255.0 for v in _triple(opts.std, "std")]
    if len(set(mean)) > 1 or len(set(std)) > 1:
        raise UsageError(
            f"--option mean={opts.mean} / std={opts.std}: MediaPipe's ImageClassifier normalizes all channels "
            "alike (per-channel values are refused at load); give one value each, e.g. mean=0.5 std=0.25"
        )
    if any(v == 0 for v in std):
        raise UsageError(f"--option std={opts.std}: a std of 0 divides by zero")
    files: dict[str, bytes] = {}
    label_name = None
    if opts.labels:
        path = Path(opts.labels)
        if not path.is_file():
            raise InputError(f"--option labels={opts.labels}: no such file; give a text file with one label per line")
        data = read_labels(str(path))
        classes = outs[0]["shape"][1]
        if len(data.splitlines()) != classes:
            raise InputError(f"{path}: {len(data.splitlines())} labels for {classes} classes; give one label per class")
        label_name = "labels.txt"
        files[label_name] = data
    blob = image_classifier_metadata(name, ins[0]["name"], outs[0]["name"], mean, std, label_name)
    return {"min_runtime_version": runtime_version(), "TFLITE_METADATA": blob}, files
