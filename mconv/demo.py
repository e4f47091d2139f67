"""``make demo``: a small PyTorch model defined here, saved as TorchScript, exported to
ONNX and built for every target that can run on this machine, each verified by its
runtime against onnxruntime; one table at the end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from mconv.results import BuildResult

OUT = Path("demo_out")
PRECISIONS = ("fp32", "fp16", "int8")
COLUMNS = ("target", "precision", "status", "rel err", "cosine", "top-1", "seconds", "artifact")


class TinyNet(nn.Module):
    """conv-bn-relu stem, a depthwise residual block, global pool and a classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(16, 16, 3, 1, 1, groups=16),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 1),
            nn.BatchNorm2d(16),
        )
        self.head = nn.Sequential(
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x)


def make_model() -> TinyNet:
    """TinyNet with seeded weights and non-trivial BatchNorm statistics (so fusion matters)."""
    torch.manual_seed(0)
    m = TinyNet().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def calibration_images(folder: Path, count: int = 32, size: int = 64) -> None:
    """Smooth pseudo-images (gradients and blobs), not white noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        chans = []
        for _ in range(3):
            a, b, c = rng.uniform(-1, 1, 3)
            cx, cy = rng.uniform(0, 1, 2)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * rng.uniform(5, 30))
            chans.append(a * xx + b * yy + c * blob)
        img = np.stack(chans)[None].astype(np.float32)
        np.save(folder / f"sample_{i:03d}.npy", img)


def main() -> int:
    from rich.console import Console

    from mconv.errors import MconvError
    from mconv.targets import all_targets, get_target

    con = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    OUT.mkdir(exist_ok=True)
    onnx_path = _export_demo_model(con)
    calib = OUT / "calib"
    calibration_images(calib)

    table = _results_table()
    failed = 0
    notes: list[str] = []
    for entry in all_targets():
        name = entry.name
        try:
            target = get_target(name)
            missing = target.runtime_missing()
        except MconvError as e:
            _add_skipped(table, name)
            notes.append(f"{name}: {e}")
            continue
        if missing:
            _add_skipped(table, name)
            notes.append(f"{name} skipped: {missing}")
            continue
        failed += _build_precisions(onnx_path, name, target.precisions, calib, table, notes)
    con.print(table)
    for n in notes:
        con.print(f"- {n}")
    return 1 if failed else 0


def _export_demo_model(con: Console) -> Path:
    """Save TinyNet as TorchScript in OUT and export it to ONNX (verified against PyTorch)."""
    import mconv

    model = make_model()
    src = OUT / "tinynet.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 64, 64)), str(src))
    con.print(f"saved TorchScript model {src}")
    exp = mconv.export(src, OUT / "tinynet.onnx", inputs={"input": (1, 3, 64, 64)})
    v = exp.verification.comparison.outputs[0]
    con.print(f"exported {exp.onnx} ({exp.exporter}), rel error vs PyTorch {v.rel:.2e}")
    return exp.onnx


def _results_table() -> Table:
    from rich.table import Table

    table = Table(title="mconv demo: tinynet (TorchScript) -> ONNX -> targets, verified against onnxruntime")
    for col in COLUMNS:
        table.add_column(col)
    return table


def _add_skipped(table: Table, name: str) -> None:
    table.add_row(name, "-", "skipped", "", "", "", "", "")


def _build_precisions(
    onnx_path: Path, name: str, precisions: tuple[str, ...], calib: Path, table: Table, notes: list[str]
) -> int:
    """Build and verify ``onnx_path`` for target ``name`` at each demo precision it supports.

    Adds a table row per build and a note per failure; returns the number of failed builds.
    """
    import mconv
    from mconv.errors import MconvError

    failed = 0
    for precision in PRECISIONS:
        if precision not in precisions:
            continue
        try:
            r = mconv.build(
                onnx_path,
                name,
                OUT / f"tinynet_{name}_{precision}",
                precision=precision,
                calib=calib if precision == "int8" else None,
                calib_count=32,
            )
        except MconvError as e:
            failed += 1
            table.add_row(name, precision, f"[red]FAILED (exit {e.exit_code})[/red]", "", "", "", "", "")
            notes.append(f"{name} {precision}: {e}")
            continue
        table.add_row(name, precision, "[green]verified[/green]", *_verified_cells(r))
    return failed


def _verified_cells(r: BuildResult) -> tuple[str, ...]:
    """The rel err, cosine, top-1, seconds and artifact cells of a verified build."""
    o = r.verification.comparison.outputs[0]
    return (
        f"{o.rel:.2e}",
        f"{o.cosine:.6f}",
        "" if o.top1 is None else f"{o.top1:.2f}",
        f"{r.seconds:.1f}",
        r.artifact.main.as_posix(),
    )


if __name__ == "__main__":
    sys.exit(main())
