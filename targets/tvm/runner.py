"""Running a TVM artifact: ``tvm.runtime.load_module`` + ``relax.VirtualMachine`` on the CPU.

Threads: TVM's thread pool reads ``TVM_NUM_THREADS`` when it starts (the first parallel
call), so the runner sets it before loading the library. Runners run in a child process
(mconv's verify and bench spawn one per artifact), where no TVM pool has started yet.
Untuned (rule-scheduled) and tuned libraries run their outer loops on that pool; with
``schedule=none`` they are serial loops whose speed hardly depends on it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mconv.errors import ConversionError, InputError
from mconv.targets.base import Artifact, Feeds, Runner
from mconv.targets.tvm.compile import import_tvm


class TvmRunner(Runner):
    """Runs ``<stem>.so`` on ``tvm.cpu()``; outputs keyed by the ONNX output names."""

    def __init__(self, artifact: Artifact, *, threads: int | None = None) -> None:
        super().__init__(artifact, threads=threads)
        self._vm: Any = None
        self._inputs = [m["name"] for m in artifact.meta.get("inputs") or []]
        self._outputs = list(artifact.meta.get("output_names") or artifact.meta.get("outputs") or [])

    def load(self) -> None:
        if self._vm is not None:
            return
        if self.threads:
            os.environ["TVM_NUM_THREADS"] = str(int(self.threads))
        tvm = import_tvm()
        from tvm import relax

        lib = self.artifact.main
        try:
            self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise ConversionError(f"{lib}: TVM cannot load the library: {first[:300]}") from e

    def input_names(self) -> list[str]:
        return list(self._inputs)

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def infer_impl(self, feeds: Feeds) -> Feeds:
        self.load()
        tvm = import_tvm()
        args = []
        for m in self.artifact.meta.get("inputs") or []:
            arr = feeds[m["name"]]
            if list(arr.shape) != list(m["shape"]):
                raise InputError(
                    f"{self.artifact.main}: input '{m['name']}' has shape {list(arr.shape)}; the library was "
                    f"compiled for {m['shape']} (rebuild with --input {m['name']}:...)"
                )
            args.append(tvm.runtime.tensor(np.ascontiguousarray(arr, dtype=m.get("dtype") or "float32")))
        try:
            result = self._vm["main"](*args)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise InputError(f"{self.artifact.main}: TVM inference failed: {first[:300]}") from e
        values = _flatten(result)
        return {name: np.array(v.numpy(), copy=True) for name, v in zip(self._outputs, values, strict=True)}


def _flatten(result: Any) -> list[Any]:
    """The VM returns one tensor, or a (nested) tuple of them for several outputs."""
    if hasattr(result, "numpy"):
        return [result]
    out = []
    for item in result:
        out += _flatten(item)
    return out
