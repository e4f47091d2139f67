"""Synthetic samples for recipes without a data set, saved as .npy/.npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SYNTHETIC_COUNT = 16  # synthetic calibration samples when the recipe gives no count


def synthetic_samples(kind: str, infos, shapes, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded samples: smooth pseudo-images (gradients and blobs) for NCHW float inputs, else normals."""
    from mconv.data import concrete_shape, random_feeds

    if kind == "normal":
        return random_feeds(infos, seed=seed, count=count, shapes=shapes)
    rng = np.random.default_rng(seed)
    out = []
    for feeds in random_feeds(infos, seed=seed, count=count, shapes=shapes):
        for info in infos:
            shape = concrete_shape(info, shapes)
            if len(shape) != 4 or feeds[info.name].dtype.kind != "f":
                continue
            n, c, h, w = shape
            yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
            img = np.empty(shape, np.float32)
            for b in range(n):
                for ch in range(c):
                    a, bb, cc = rng.uniform(-1, 1, 3)
                    cx, cy = rng.uniform(0, 1, 2)
                    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * rng.uniform(5, 30))
                    img[b, ch] = a * xx + bb * yy + cc * blob
            feeds[info.name] = img.astype(feeds[info.name].dtype)
        out.append(feeds)
    return out


def save_samples(samples: list[dict[str, np.ndarray]], folder: Path) -> list[Path]:
    from mconv.fsutil import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, feeds in enumerate(samples):
        single = len(feeds) == 1
        dest = folder / (f"sample_{i:04d}.npy" if single else f"sample_{i:04d}.npz")
        with atomic_path(dest) as tmp, open(tmp, "wb") as f:
            if single:
                np.save(f, next(iter(feeds.values())))
            else:
                np.savez(f, **feeds)
        written.append(dest)
    return written
