"""PaddlePaddle -> ONNX, through paddle2onnx, in a child process.

Source files, as ``paddle.jit.save`` writes them (detected by content and name):
- PIR (Paddle 3.x default): ``<prefix>.json`` (the program, ``"magic":"pir"``) + ``<prefix>.pdiparams``;
- the older program format (``FLAGS_enable_pir_api=0``): ``<prefix>.pdmodel`` + ``<prefix>.pdiparams``.
The model file, the params file, the common prefix or a folder holding one pair are all
accepted. Dygraph ``.pdparams`` state dicts are pickles and are not read.

paddle2onnx pins an old onnx and, on first use, lets polygraphy pip-install packages into
the environment. mconv installs it with ``--no-deps`` (it needs neither for what mconv asks
of it), calls it with ``optimize_tool="None"`` (no polygraphy, no onnxoptimizer: mconv's own
passes fold constants) and in a child process whose environment turns the auto-install off,
so a conversion never changes the user's environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mconv.convert.base import ExportOptions, Source, SourceExport, export_isolated
from mconv.errors import ConversionError, InputError, MissingDependencyError

PADDLE2ONNX_PIN = "paddle2onnx==2.1.0"
PADDLE2ONNX_INSTALL = f"pip install --no-deps {PADDLE2ONNX_PIN}"
MODEL_SUFFIXES = (".json", ".pdmodel")
PARAMS_SUFFIX = ".pdiparams"


def _head(path: Path, n: int = 256) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def is_model_file(path: Path) -> bool:
    """A PIR program (.json with the "pir" magic) or an older .pdmodel program."""
    if not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix == ".pdmodel":
        return True
    if suffix == ".json":
        head = _head(path).replace(b" ", b"")
        return head.startswith(b"{") and b'"magic":"pir"' in head
    return False


def is_params_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(PARAMS_SUFFIX)


def _sibling(path: Path, suffix: str) -> Path:
    return path.parent / (path.name + suffix)


def _prefix(path: Path) -> Path:
    """``dir/net.json`` / ``dir/net.pdiparams`` -> ``dir/net``."""
    for suffix in (*MODEL_SUFFIXES, PARAMS_SUFFIX):
        if path.name.lower().endswith(suffix):
            return path.parent / path.name[: -len(suffix)]
    return path


def _model_of_prefix(prefix: Path) -> Path | None:
    for suffix in MODEL_SUFFIXES:
        candidate = _sibling(prefix, suffix)
        if is_model_file(candidate):
            return candidate
    return None


def find_pair(path: Path) -> tuple[Path, Path]:
    """The (model file, params file) that ``path`` names; a missing half is an input error."""
    if path.is_dir():
        models = sorted(p for p in path.iterdir() if is_model_file(p))
        if not models:
            raise InputError(
                f"{path}: holds Paddle weights but no model file (<prefix>.json or <prefix>.pdmodel); "
                "put the program paddle.jit.save wrote beside them"
            )
        if len(models) > 1:
            names = ", ".join(p.name for p in models)
            raise InputError(f"{path}: holds {len(models)} Paddle models ({names}); give one of the files")
        path = models[0]
    model = path if is_model_file(path) else _model_of_prefix(_prefix(path))
    prefix = _prefix(path)
    if model is None:
        raise InputError(
            f"{prefix}.json (or {prefix.name}.pdmodel): missing; {path.name} holds only the weights, "
            "the program is the model file paddle.jit.save writes beside it"
        )
    params = _sibling(prefix, PARAMS_SUFFIX)
    if not params.is_file():
        raise InputError(
            f"{params}: missing; {model.name} needs its weights file {params.name} beside it "
            "(paddle.jit.save writes both)"
        )
    return model, params


class PaddleSource(Source):
    name = "paddle"
    framework = "PaddlePaddle"
    extra = "paddle"
    description = "paddle.jit.save models: <prefix>.json or .pdmodel + <prefix>.pdiparams, or their folder"

    def detect(self, path: Path) -> bool:
        if path.is_dir():
            return any(is_model_file(p) or is_params_file(p) for p in path.iterdir())
        if path.is_file():
            return is_model_file(path) or is_params_file(path)
        return any(_sibling(path, s).is_file() for s in (".pdmodel", PARAMS_SUFFIX)) or is_model_file(
            _sibling(path, ".json")
        )

    def stem(self, path: Path) -> str:
        try:
            model, _ = find_pair(path)
        except InputError:
            return _prefix(path).name or "model"
        return _prefix(model).name or "model"

    def export(self, path: Path, opts: ExportOptions) -> SourceExport:
        model_file, params_file = find_pair(path)
        out = export_isolated(
            "mconv.convert.paddle:export_in_child",
            path,
            opts,
            "the Paddle exporter",
            model_file=str(model_file),
            params_file=str(params_file),
        )
        fmt = "pir" if model_file.suffix.lower() == ".json" else "pdmodel"
        return SourceExport(out["model"], "paddle2onnx", out["reference"], out["feeds"], facts={"format": fmt})


def _import_frameworks() -> tuple[Any, Any]:
    # paddle2onnx sets POLYGRAPHY_AUTOINSTALL_DEPS=1 itself before its polygraphy step;
    # optimize_tool="None" skips that step, and this keeps any other path from installing.
    os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        import paddle
    except ImportError as e:
        raise MissingDependencyError("PaddlePaddle", "paddle", "needed to read Paddle models") from e
    try:
        import paddle2onnx
    except ImportError as e:
        raise ConversionError(
            f"paddle2onnx is not installed: install it with `{PADDLE2ONNX_INSTALL}` (--no-deps: its own pins "
            "would downgrade onnx; mconv needs none of them)"
        ) from e
    return paddle, paddle2onnx


def export_in_child(model_file: str, params_file: str, opset: int, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Convert with paddle2onnx, then run Paddle on one sample (in the child process)."""
    import onnx

    from mconv.convert.base import sample_feeds
    from mconv.specs import InputSpec

    _paddle, paddle2onnx = _import_frameworks()
    try:
        blob = paddle2onnx.export(
            model_file, params_file, None, opset_version=opset, optimize_tool="None", enable_onnx_checker=True
        )
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(f"{model_file}: paddle2onnx could not convert the model: {first[:300]}") from e
    model = onnx.load_from_string(blob)
    opts = ExportOptions(inputs=[InputSpec(n, tuple(s)) for n, s in shapes.items()])
    feeds = sample_feeds(model, opts)
    return {"model": blob, "feeds": feeds, "reference": run_paddle(model_file, params_file, feeds)}


def run_paddle(model_file: str, params_file: str, feeds: dict[str, Any]) -> list[Any]:
    """Paddle's own inference engine on ``feeds``: the outputs, in the program's order."""
    import paddle.inference as pi

    config = pi.Config(model_file, params_file)
    config.disable_gpu()
    config.disable_glog_info()
    config.switch_ir_optim(False)  # the program as saved, not Paddle's fused rewrite of it
    predictor = pi.create_predictor(config)
    for name in predictor.get_input_names():
        if name not in feeds:
            raise ConversionError(f"{model_file}: the Paddle program's input '{name}' is not an input of its ONNX")
        handle = predictor.get_input_handle(name)
        handle.reshape(list(feeds[name].shape))
        handle.copy_from_cpu(feeds[name])
    predictor.run()
    return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
