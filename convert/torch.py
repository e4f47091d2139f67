"""PyTorch -> ONNX.

Source kinds, detected from the file's content (not its suffix):
- ``torchscript``: a ``torch.jit.save`` archive (zip with ``code/`` and ``constants.pkl``);
- ``exported_program``: a ``torch.export.save`` archive (zip with ``archive_format``/``models/``);
- ``checkpoint``: a ``torch.save`` of tensors (state_dict), loaded with
  ``weights_only=True`` and applied to the module built by ``--model``;
- ``pickle``: a full pickle (e.g. ``torch.save(module)``), loaded only with
  ``--trust-pickle`` because unpickling runs code from the file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mconv.convert.base import ExportOptions, Source, SourceExport
from mconv.errors import ConversionError, InputError, MconvError, MissingDependencyError, UsageError
from mconv.quiet import quiet
from mconv.specs import DynamicAxis, InputSpec

DEFAULT_OPSET = 17
EXPORTERS = ("auto", "dynamo", "torchscript")
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise MissingDependencyError("PyTorch", "torch", "needed to read .pt/.pt2 sources") from e
    return torch


class TorchSource(Source):
    name = "torch"
    framework = "PyTorch"
    extra = "torch"
    description = "TorchScript, ExportedProgram (.pt2), state_dict with --model, pickle with --trust-pickle"
    suffixes = (".pt2", ".pt", ".pth", ".ckpt", ".bin", ".torchscript")

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            return True
        if head != b"PK":
            return False
        # Other formats are zips too (Keras, numpy's .npz): a zip is PyTorch's by its entries,
        # or by its name (then a damaged or foreign archive gets PyTorch's own message).
        if path.name.lower().endswith(self.suffixes):
            return True
        try:
            with zipfile.ZipFile(path) as z:
                tails = {n.split("/", 1)[-1] for n in z.namelist()}
        except zipfile.BadZipFile:
            return False
        return bool(tails & {"data.pkl", "constants.pkl", "archive_format"}) or any(
            t.startswith("models/") for t in tails
        )

    def export(self, path: Path, opts: ExportOptions) -> SourceExport:
        self.check_layout(opts)
        return export(
            path,
            model_spec=opts.model_spec,
            inputs=opts.inputs,
            dynamic=opts.dynamic,
            opset=opts.opset,
            exporter=opts.exporter,
            trust_pickle=opts.trust_pickle,
        )


def detect_kind(path: Path) -> str:
    """'torchscript' | 'exported_program' | 'torch_zip' | 'torch_legacy' | 'other'."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise InputError(f"{path}: a damaged zip archive, not a readable PyTorch file") from e
        tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in tails or any(t.startswith("models/") for t in tails):
            return "exported_program"
        if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
            return "torchscript"
        if "data.pkl" in tails:
            return "torch_zip"
        raise InputError(
            f"{path}: a zip archive that is neither TorchScript, an ExportedProgram nor a "
            "torch.save checkpoint; save the model with torch.jit.save, torch.export.save or torch.save"
        )
    if head[:2] in PICKLE_MAGIC:
        return "torch_legacy"
    return "other"


@dataclass
class LoadedSource:
    kind: str  # torchscript | exported_program | checkpoint | pickle
    module: Any  # nn.Module / ScriptModule / ExportedProgram
    example_inputs: list[Any] | None = None
    input_names: list[str] = field(default_factory=list)


def load_factory(spec: str) -> Any:
    """``module.path:attr`` or ``path/to/file.py:attr`` -> the callable."""
    if ":" not in spec:
        raise UsageError(f"--model '{spec}': expected module.path:factory or path/to/file.py:Class")
    mod_name, _, attr = spec.rpartition(":")
    if mod_name.endswith(".py") or os.sep in mod_name:
        p = Path(mod_name)
        if not p.is_file():
            raise UsageError(f"--model '{spec}': no such file {p}")
        module_id = f"mconv_user_model_{abs(hash(str(p.resolve())))}"
        s = importlib.util.spec_from_file_location(module_id, p)
        if s is None or s.loader is None:
            raise UsageError(f"--model '{spec}': cannot import {p}")
        mod = importlib.util.module_from_spec(s)
        sys.modules[module_id] = mod
        try:
            s.loader.exec_module(mod)
        except Exception as e:
            raise UsageError(f"--model '{spec}': importing {p} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise UsageError(f"--model '{spec}': cannot import module '{mod_name}' ({e})") from e
    fn = getattr(mod, attr, None)
    if fn is None:
        raise UsageError(f"--model '{spec}': '{mod_name}' has no attribute '{attr}'")
    return fn


def _state_dict_of(obj: Any, path: Path) -> dict:
    torch = _torch()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise InputError(
        f"{path}: a checkpoint without a state_dict of tensors; save one with torch.save(model.state_dict(), path)"
    )


def load_source(path: Path, *, model_spec: str | None = None, trust_pickle: bool = False) -> LoadedSource:
    """Load a PyTorch source file without executing code from it (unless trusted)."""
    torch = _torch()
    kind = detect_kind(path)
    if kind == "other":
        raise InputError(
            f"{path}: not a PyTorch file (TorchScript, ExportedProgram or torch.save "
            "checkpoint) nor ONNX; check the file"
        )
    if kind == "torchscript":
        return _load_torchscript(path)
    if kind == "exported_program":
        return _load_exported_program(path)
    obj = _load_saved_object(path, trust_pickle)
    if isinstance(obj, torch.nn.Module):
        return LoadedSource("pickle", obj.eval())
    return _load_checkpoint(path, obj, model_spec)


def _load_torchscript(path: Path) -> LoadedSource:
    torch = _torch()
    try:
        m = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise InputError(
            f"{path}: a damaged TorchScript archive ({type(e).__name__}); re-save it with torch.jit.save"
        ) from e
    return LoadedSource("torchscript", m.eval())


def _load_exported_program(path: Path) -> LoadedSource:
    torch = _torch()
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise InputError(
            f"{path}: a damaged ExportedProgram archive ({type(e).__name__}: "
            f"{str(e)[:120]}); re-save it with torch.export.save"
        ) from e
    example = None
    if ep.example_inputs is not None:
        example = list(ep.example_inputs[0])
    if example is None:
        example = _placeholder_examples(ep)
    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    return LoadedSource("exported_program", ep, example, names)


def _load_saved_object(path: Path, trust_pickle: bool) -> Any:
    """What a torch.save file holds: weights only, or (``trust_pickle``) any pickled object."""
    torch = _torch()
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        if not isinstance(e, __import__("pickle").UnpicklingError) and "Weights only load failed" not in str(e):
            raise InputError(f"{path}: not a readable torch.save file ({type(e).__name__}); check the file") from e
        if not trust_pickle:
            raise InputError(
                f"{path}: a full Python pickle (e.g. torch.save(model)), not plain weights; "
                "unpickling runs code stored in the file, so mconv refuses it. If you trust the file, "
                "pass --trust-pickle; better, save a state_dict or TorchScript/ExportedProgram instead"
            ) from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e2:
        raise InputError(f"{path}: unpickling failed: {type(e2).__name__}: {e2}") from e2


def _load_checkpoint(path: Path, obj: Any, model_spec: str | None) -> LoadedSource:
    """A module built by ``model_spec``'s factory with the checkpoint's weights loaded."""
    torch = _torch()
    if model_spec is None:
        raise UsageError(
            f"{path}: a state_dict checkpoint holds weights only; name the architecture "
            "with --model module.path:factory or --model path/to/file.py:ClassOrFactory"
        )
    state = _state_dict_of(obj, path)
    factory = load_factory(model_spec)
    try:
        module = factory()
    except Exception as e:
        raise UsageError(f"--model '{model_spec}': calling it failed: {type(e).__name__}: {e}") from e
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"--model '{model_spec}' returned {type(module).__name__}, not a torch.nn.Module")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"{path}: weights do not fit --model '{model_spec}': {first[:300]}") from e
    return LoadedSource("checkpoint", module.eval())


def _placeholder_examples(ep) -> list[Any] | None:
    torch = _torch()
    out = []
    for node in ep.graph.nodes:
        if node.op != "placeholder":
            continue
        name = node.name
        specs = {s.arg.name: s for s in ep.graph_signature.input_specs}
        if name in specs and specs[name].kind.name != "USER_INPUT":
            continue
        val = node.meta.get("val")
        if val is None or not hasattr(val, "shape"):
            return None
        shape = [int(d) if isinstance(d, int) else 1 for d in val.shape]
        out.append(torch.zeros(shape, dtype=val.dtype))
    return out


def _example_inputs(src: LoadedSource, specs: list[InputSpec], path: Path) -> tuple[list[Any], list[str]]:
    torch = _torch()
    if specs:
        gen = torch.Generator().manual_seed(0)
        tensors = []
        for s in specs:
            if s.np_dtype.kind == "f":
                t = torch.randn(s.shape, generator=gen).to(getattr(torch, s.dtype))
            else:
                t = torch.randint(0, 10, s.shape, generator=gen).to(getattr(torch, s.dtype))
            tensors.append(t)
        return tensors, [s.name for s in specs]
    if src.example_inputs:
        gen = torch.Generator().manual_seed(0)
        tensors = [
            torch.randn(t.shape, generator=gen).to(t.dtype) if t.is_floating_point() else t for t in src.example_inputs
        ]
        names = src.input_names if len(src.input_names) == len(tensors) else [f"input_{i}" for i in range(len(tensors))]
        return tensors, names
    raise UsageError(
        f"{path}: the input shapes are unknown for a {src.kind} source; give each input "
        "with --input NAME:1x3x224x224[:float32]"
    )


def _flatten(out: Any) -> list[Any]:
    torch = _torch()
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flatten(out[k])]
    return []


def export(
    path: Path,
    *,
    model_spec: str | None = None,
    inputs: list[InputSpec] | None = None,
    dynamic: list[DynamicAxis] | None = None,
    opset: int | None = None,
    exporter: str = "auto",
    trust_pickle: bool = False,
) -> SourceExport:
    """Load a PyTorch source and export it to an in-memory ONNX ModelProto."""
    torch = _torch()
    if exporter not in EXPORTERS:
        raise UsageError(f"--exporter '{exporter}': choose one of {', '.join(EXPORTERS)}")
    opset = opset or DEFAULT_OPSET
    if not 7 <= opset <= 25:
        raise UsageError(f"--opset {opset}: choose an opset between 7 and 25 (default {DEFAULT_OPSET})")
    src = load_source(path, model_spec=model_spec, trust_pickle=trust_pickle)
    args, names = _example_inputs(src, list(inputs or []), path)
    dynamic = list(dynamic or [])
    for d in dynamic:
        if d.name not in names:
            raise UsageError(
                f"--dynamic {d.name}:{d.axis}={d.label}: no input named '{d.name}' (inputs: {', '.join(names)})"
            )
        rank = args[names.index(d.name)].dim()
        if d.axis >= rank:
            raise UsageError(f"--dynamic {d.name}:{d.axis}={d.label}: input has rank {rank}")
    with torch.no_grad():
        module = src.module.module() if src.kind == "exported_program" else src.module
        try:
            ref = _flatten(module(*args))
        except Exception as e:
            raise InputError(
                f"{path}: running the model on inputs {[list(a.shape) for a in args]} "
                f"failed: {type(e).__name__}: {str(e)[:200]}; check --input"
            ) from e
    order = _exporter_order(src.kind, exporter)
    errors = []
    for which in order:
        try:
            model = _run_exporter(which, src, args, names, len(ref), dynamic, opset)
            feeds = {n: a.detach().numpy() for n, a in zip(names, args)}
            return SourceExport(model, which, [t.detach().numpy() for t in ref], feeds, [f"{w}" for w in errors])
        except MconvError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            errors.append(f"{which} exporter: {type(e).__name__}: {first[:300]}")
    raise ConversionError(f"{path}: export to ONNX failed: " + " | ".join(errors))


def _exporter_order(kind: str, exporter: str) -> list[str]:
    if exporter != "auto":
        return [exporter]
    if kind == "exported_program":
        return ["dynamo"]
    # The TorchScript-based exporter is fast and stable on CNNs and traced
    # archives; dynamo is the fallback for what it cannot script.
    return ["torchscript", "dynamo"]


def _run_exporter(which, src, args, names, n_out, dynamic, opset):
    torch = _torch()
    import onnx

    from mconv.convert.torch_symbolics import register

    out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    with tempfile.TemporaryDirectory(prefix="mconv-export-") as d:
        f = os.path.join(d, "model.onnx")
        with quiet():
            if which == "torchscript":
                if src.kind == "exported_program":
                    raise ConversionError("an ExportedProgram can only go through the dynamo exporter")
                register()
                dyn_axes = {}
                for dax in dynamic:
                    dyn_axes.setdefault(dax.name, {})[dax.axis] = dax.label
                torch.onnx.export(
                    src.module,
                    tuple(args),
                    f,
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    output_names=out_names,
                    dynamic_axes=dyn_axes or None,
                    do_constant_folding=True,
                )
            else:
                dyn_shapes = None
                if dynamic:
                    dims = {}
                    for dax in dynamic:
                        dims.setdefault(dax.name, {})[dax.axis] = torch.export.Dim(dax.label)
                    dyn_shapes = tuple(dims.get(n) for n in names)
                torch.onnx.export(
                    src.module,
                    tuple(args),
                    f,
                    dynamo=True,
                    opset_version=opset,
                    input_names=names,
                    output_names=out_names,
                    dynamic_shapes=dyn_shapes,
                    external_data=True,
                )
        return onnx.load(f)
