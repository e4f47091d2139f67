"""Semantic checks after the schema (target names, precisions and options; pass names and
options) and path resolution: every path made absolute and kept inside the recipe's folder."""

from __future__ import annotations

import difflib
import glob
import importlib.util
import inspect
import re
from pathlib import Path

from mconv.errors import UsageError
from mconv.recipe.schema import PassSpec, Recipe, TargetSpec
from mconv.recipe.yaml_io import KeyLocator

_GLOB_CHARS = set("*?[")


def check_names(spec: Recipe, ctx: KeyLocator, base: Path) -> None:
    from mconv.errors import ConversionError
    from mconv.targets import get_target

    labels: dict[str, int] = {}
    for i, t in enumerate(spec.targets):
        try:
            target = get_target(t.target)
        except ConversionError:
            target = None  # a target that fails to load fails its step at run time, with its error
        except UsageError as e:
            raise ctx.fail(("targets", str(i), "target"), str(e).replace("--target ", "", 1)) from None
        if target is not None and t.precision not in target.precisions:
            raise ctx.fail(
                ("targets", str(i), "precision"),
                f"target '{t.target}' supports {', '.join(target.precisions)}, not {t.precision}",
            )
        if target is not None:
            _check_target_options(t, target, ("targets", str(i), "options"), ctx, base)
        if t.label in labels:
            raise ctx.fail(
                ("targets", str(i)),
                f"a second target named '{t.label}' (also targets.{labels[t.label]}); give one a distinct `name:`",
            )
        labels[t.label] = i
        if t.precision == "int8" and t.calib is None and spec.calib is None:
            raise ctx.fail(("targets", str(i), "precision"), "int8 needs calibration data: add `calib:` to the target")
        if t.calib is not None and t.precision != "int8":
            raise ctx.fail(("targets", str(i), "calib"), "calib is only used with precision: int8")
    for i, p in enumerate(spec.passes or []):
        _check_pass(p, ("passes", str(i)), ctx)


def _check_target_options(t: TargetSpec, target, path: tuple[str, ...], ctx: KeyLocator, base: Path) -> None:
    """Each option against the target's declaration; file paths resolved inside the recipe folder."""
    for key, value in list(t.options.items()):
        try:
            target.make_options({key: value}, precision=t.precision)
        except UsageError as e:
            spec = target.Options.spec(key)
            shown = spec.shown() if spec is not None else f"--option {key}"
            raise ctx.fail((*path, str(key)), str(e).replace(shown, str(key), 1)) from None
        spec = target.Options.spec(key)
        if spec.path and value:
            values = value if isinstance(value, list) else [value]
            resolved = [str(_inside(base, str(v), (*path, str(key)), ctx, must_exist=False)) for v in values]
            t.options[key] = resolved if isinstance(value, list) else resolved[0]


def _check_pass(p: PassSpec, path: tuple[str, ...], ctx: KeyLocator) -> None:
    from mconv.passes import all_passes, get_pass

    known = all_passes()
    if p.name not in known:
        close = difflib.get_close_matches(p.name, list(known), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ctx.fail((*path, "name"), f"unknown pass '{p.name}'; {hint}see `mconv passes`")
    if not p.options:
        return
    params = inspect.signature(type(get_pass(p.name)).__init__).parameters
    accepted = {k for k, v in params.items() if k != "self" and v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)}
    for k in p.options:
        if k not in accepted:
            takes = ", ".join(sorted(accepted)) or "no options"
            raise ctx.fail((*path, "options", str(k)), f"pass '{p.name}' has no option '{k}' (it takes {takes})")


def _inside(base: Path, text: str, path: tuple[str, ...], ctx: KeyLocator, *, must_exist: bool = True) -> Path:
    """``text`` relative to the recipe folder, refused if it resolves outside of it."""
    raw = Path(text).expanduser() if text.startswith("~") else Path(text)
    full = (base / raw).resolve()
    if not full.is_relative_to(base):
        raise ctx.fail(
            path,
            f"'{text}' escapes the recipe's folder {base}; recipes may only use files in their folder "
            "(move the file next to the recipe or into a subfolder)",
        )
    if must_exist and not full.exists():
        raise ctx.fail(path, f"no such file '{text}' (paths are relative to the recipe file, {base})")
    return full


def _data_path(base: Path, text: str, path: tuple[str, ...], ctx: KeyLocator) -> str:
    """A folder, file or glob of samples, all inside the recipe folder."""
    parts = Path(text).parts
    first_glob = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), None)
    if first_glob is None:
        return str(_inside(base, text, path, ctx))
    if ".." in parts[first_glob:]:
        raise ctx.fail(path, f"'{text}': '..' after a wildcard could leave the recipe's folder; write the path out")
    prefix = _inside(base, str(Path(*parts[:first_glob])) if first_glob else ".", path, ctx, must_exist=False)
    pattern = str(prefix.joinpath(*parts[first_glob:]))
    matches = [Path(m) for m in glob.glob(pattern)]
    if not matches:
        raise ctx.fail(path, f"'{text}' matches no file (paths are relative to the recipe file, {base})")
    for m in matches:
        if not m.resolve().is_relative_to(base):
            raise ctx.fail(path, f"'{text}' matches {m}, a link that escapes the recipe's folder {base}")
    return pattern


def _callable_spec(base: Path, text: str, path: tuple[str, ...], ctx: KeyLocator) -> str:
    """'file.py:Name' (file inside the recipe folder) or 'module.path:name' (installed)."""
    mod, sep, attr = text.rpartition(":")
    if not sep or not mod or not attr.isidentifier():
        raise ctx.fail(path, f"'{text}': expected 'module.path:callable' or 'file.py:Callable'")
    if mod.endswith(".py") or "/" in mod or "\\" in mod:
        return f"{_inside(base, mod, path, ctx)}:{attr}"
    if not all(part.isidentifier() for part in mod.split(".")):
        raise ctx.fail(path, f"'{mod}' is neither a module path nor a .py file")
    if importlib.util.find_spec(mod.split(".")[0]) is None:
        raise ctx.fail(path, f"module '{mod.split('.')[0]}' is not installed")
    return text


def _resource(text: str, path: tuple[str, ...], ctx: KeyLocator) -> str:
    pkg, sep, rel = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", pkg) or not rel:
        raise ctx.fail(path, f"'{text}': expected 'package:relative/path', e.g. onnx:backend/test/data/light/x.onnx")
    found = importlib.util.find_spec(pkg.split(".")[0])
    if found is None or not found.submodule_search_locations:
        raise ctx.fail(path, f"package '{pkg}' is not installed")
    root = Path(next(iter(found.submodule_search_locations))).resolve()
    if "." in pkg:
        root = root.joinpath(*pkg.split(".")[1:])
    full = (root / rel).resolve()
    if not full.is_relative_to(root):
        raise ctx.fail(path, f"'{text}' escapes the package folder {root}")
    if not full.is_file():
        raise ctx.fail(path, f"no such file '{rel}' in package '{pkg}' ({root})")
    return str(full)


def resolve_paths(spec: Recipe, base: Path, ctx: KeyLocator) -> None:
    src = spec.source
    if src.path:
        src.path = str(_inside(base, src.path, ("source", "path"), ctx))
    if src.weights:
        src.weights = str(_inside(base, src.weights, ("source", "weights"), ctx))
    if src.resource:
        src.resource = _resource(src.resource, ("source", "resource"), ctx)
    if src.factory:
        src.factory = _callable_spec(base, src.factory, ("source", "factory"), ctx)
    if src.checkpoint:
        src.checkpoint = str(_inside(base, src.checkpoint, ("source", "checkpoint"), ctx))
    if src.make_checkpoint:
        src.make_checkpoint = _callable_spec(base, src.make_checkpoint, ("source", "make_checkpoint"), ctx)
    if spec.calib and spec.calib.path:
        spec.calib.path = _data_path(base, spec.calib.path, ("calib", "path"), ctx)
    if spec.verify.inputs and spec.verify.inputs.path:
        spec.verify.inputs.path = _data_path(base, spec.verify.inputs.path, ("verify", "inputs", "path"), ctx)
    for i, t in enumerate(spec.targets):
        if t.calib and t.calib.path:
            t.calib.path = _data_path(base, t.calib.path, ("targets", str(i), "calib", "path"), ctx)
