"""The one loader for calibration and verification data.

A source is a folder, a glob, or a single file of ``.npy``/``.npz`` arrays
(npz keyed by input name), or images (``.png``/``.jpg``/...) turned into NCHW
float tensors with ``--mean/--std/--size``. Random feeds for verification are
generated from the model's input specs with a fixed seed.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mconv.errors import InputError, UsageError
from mconv.graphinfo import TensorInfo

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"}
ARRAY_SUFFIXES = {".npy", ".npz"}

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ImageOptions:
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    size: tuple[int, int] | None = None  # (height, width)


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise UsageError(f"{option} '{text}': expected comma-separated numbers, e.g. 0.485,0.456,0.406") from e


def list_files(source: str | os.PathLike[str], option: str = "--calib") -> list[Path]:
    """Expand a folder, glob or file into a sorted list of data files."""
    text = str(source)
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in ARRAY_SUFFIXES | IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in glob.glob(text) if Path(f).is_file())
        if not files and not any(c in text for c in "*?["):
            raise InputError(f"{option} {text}: no such file or folder")
    if not files:
        raise InputError(
            f"{option} {text}: no .npy, .npz or image files found; point it at a folder or glob of samples"
        )
    return files


def _fit(arr: np.ndarray, info: TensorInfo, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.dtype(info.dtype) and info.dtype != "unknown":
        arr = arr.astype(info.dtype)
    if info.shape is not None:
        rank = len(info.shape)
        if arr.ndim == rank - 1:  # a sample without its batch axis
            arr = arr[None]
        if arr.ndim != rank or any(isinstance(d, int) and d != s for d, s in zip(info.shape, arr.shape)):
            raise InputError(
                f"{path}: array of shape {list(arr.shape)} does not fit input '{info.name}' of shape {list(info.shape)}"
            )
    return np.ascontiguousarray(arr)


def _load_image(path: Path, info: TensorInfo, opts: ImageOptions) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as e:
        raise InputError(f"{path}: reading images needs Pillow: pip install pillow") from e
    try:
        img = Image.open(path).convert("RGB")
    except Exception as e:
        raise InputError(f"{path}: not a readable image ({e})") from e
    size = opts.size
    if size is None and info.shape is not None and len(info.shape) == 4:
        h, w = info.shape[2], info.shape[3]
        if isinstance(h, int) and isinstance(w, int):
            size = (h, w)
    if size is not None:
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    mean = np.asarray(opts.mean, np.float32)
    std = np.asarray(opts.std, np.float32)
    x = (x - mean) / std
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def load_samples(
    source: str | os.PathLike[str],
    inputs: Sequence[TensorInfo],
    *,
    limit: int | None = None,
    image: ImageOptions | None = None,
    option: str = "--calib",
) -> list[Feeds]:
    """Read up to ``limit`` samples, each a dict input name -> array with batch axis."""
    files = list_files(source, option)
    if limit is not None:
        files = files[:limit]
    names = [i.name for i in inputs]
    by_name = {i.name: i for i in inputs}
    samples: list[Feeds] = []
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".npz":
            try:
                with np.load(f, allow_pickle=False) as z:
                    missing = [n for n in names if n not in z.files]
                    if missing:
                        raise InputError(f"{f}: npz lacks input(s) {missing}; its keys are {sorted(z.files)}")
                    samples.append({n: _fit(z[n], by_name[n], f) for n in names})
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"{f}: not a readable .npz file ({e})") from e
        else:
            if len(names) != 1:
                raise InputError(f"{f}: the model has {len(names)} inputs {names}; use .npz files keyed by input name")
            info = inputs[0]
            if suffix == ".npy":
                try:
                    arr = np.load(f, allow_pickle=False)
                except Exception as e:
                    raise InputError(f"{f}: not a readable .npy file ({e})") from e
                samples.append({info.name: _fit(arr, info, f)})
            else:
                samples.append({info.name: _fit(_load_image(f, info, image or ImageOptions()), info, f)})
    return samples


def concrete_shape(info: TensorInfo, overrides: dict[str, tuple[int, ...]] | None = None) -> tuple[int, ...]:
    if overrides and info.name in overrides:
        return overrides[info.name]
    if info.shape is None:
        raise UsageError(
            f"input '{info.name}' has an unknown rank; give its shape with --input {info.name}:1x3x224x224"
        )
    # Dynamic dims: batch-like first axis -> 1, others need a spec.
    dims = []
    for i, d in enumerate(info.shape):
        if isinstance(d, int):
            dims.append(d)
        elif i == 0:
            dims.append(1)
        else:
            raise UsageError(
                f"input '{info.name}' has dynamic dimension {i} ({d}); fix it with "
                f"--input {info.name}:" + "x".join(str(x) if isinstance(x, int) else "N" for x in info.shape)
            )
    return tuple(dims)


def random_feeds(
    inputs: Sequence[TensorInfo],
    *,
    seed: int = 0,
    count: int = 1,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[Feeds]:
    """Deterministic random samples: standard normal floats, small non-negative ints."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        feeds: Feeds = {}
        for info in inputs:
            shape = concrete_shape(info, shapes)
            dt = np.dtype(info.dtype if info.dtype != "unknown" else "float32")
            if dt.kind == "f":
                feeds[info.name] = rng.standard_normal(shape).astype(dt)
            elif dt.kind == "b":
                feeds[info.name] = rng.integers(0, 2, shape).astype(dt)
            else:
                feeds[info.name] = rng.integers(0, 10, shape).astype(dt)
        out.append(feeds)
    return out


CALIB_COUNT_LOW = 100


def calibration_warnings(have: int, asked: int | None) -> list[str]:
    """What to tell the user about a calibration set: fewer samples than asked, or few at all."""
    warnings = []
    if asked is not None and have < int(asked):
        warnings.append(
            f"--calib-count {asked} asked for, but the calibration data holds only {have} "
            f"sample(s); calibrating on {have}"
        )
    if have < CALIB_COUNT_LOW:
        warnings.append(
            f"INT8 calibration on {have} sample(s) (fewer than {CALIB_COUNT_LOW}) can give poor "
            "activation ranges; give more representative samples with --calib DATA"
        )
    return warnings
