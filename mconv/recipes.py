"""Recipes: one validated YAML file per model that says where it comes from, how to
export it, which targets and precisions to build, with what data, and what accuracy
to demand. ``mconv run`` executes them (see :mod:`mconv.runjobs`).

Loading is strict and happens before any work starts: unknown keys, wrong types,
unknown target or pass names, a bad ``version``, missing files and paths that escape
the recipe's folder are :class:`RecipeError` (exit 2) whose one-line message names
the file, the line and the key path, e.g.
``recipes/resnet50.yaml:12: targets.0.precision: Input should be 'fp32', 'fp16' or 'int8'``.

YAML is read with ``yaml.SafeLoader`` only; a document over :data:`MAX_BYTES`, with
more than :data:`MAX_ALIASES` aliases, more than :data:`MAX_NODES` nodes once aliases
are expanded, or a recursive alias is refused (alias bombs).
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from mconv.errors import UsageError

RECIPE_VERSION = 1
MAX_BYTES = 1 << 20
MAX_ALIASES = 100
MAX_NODES = 20_000

Precision = Literal["fp32", "fp16", "int8"]
Dtype = Literal["float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"]
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_GLOB_CHARS = set("*?[")


class RecipeError(UsageError):
    """An invalid recipe (exit 2): the message names the file, line and key path."""

    def __init__(self, file: str, line: int | None, key: str, problem: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.file, self.line, self.key, self.problem = file, line, key, problem


# ---- schema --------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Strict):
    """Where the model comes from: exactly one of ``path``, ``resource`` or ``factory``."""

    path: str | None = Field(None, description="ONNX or PyTorch file, relative to the recipe file.")
    resource: str | None = Field(
        None,
        description="A file shipped inside an installed package, 'package:relative/path', "
        "e.g. 'onnx:backend/test/data/light/light_resnet50.onnx'.",
    )
    factory: str | None = Field(
        None,
        description="A callable returning a torch.nn.Module: 'module.path:callable' or 'file.py:Callable' "
        "(file relative to the recipe).",
    )
    checkpoint: str | None = Field(None, description="state_dict for the factory, relative to the recipe file.")
    make_checkpoint: str | None = Field(
        None,
        description="'file.py:function' called with one path argument; it writes the factory's state_dict "
        "there (seeded weights, so no binary checkpoint is committed).",
    )
    trust_pickle: bool = Field(False, description="Allow a full pickle as source (runs code from the file).")

    @model_validator(mode="after")
    def _one_source(self) -> SourceSpec:
        given = [k for k in ("path", "resource", "factory") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of path, resource or factory" + (f" (got {', '.join(given)})"))
        if (self.checkpoint or self.make_checkpoint) and not self.factory:
            raise ValueError("checkpoint and make_checkpoint go with factory")
        if self.checkpoint and self.make_checkpoint:
            raise ValueError("give checkpoint or make_checkpoint, not both")
        return self


class InputSpecModel(_Strict):
    name: str
    shape: list[Annotated[int, Field(ge=1)]] = Field(min_length=0)
    dtype: Dtype = "float32"
    dynamic: dict[int, str] = Field(default_factory=dict, description="axis -> label, kept dynamic on export.")


class ExportSpec(_Strict):
    opset: int | None = Field(None, ge=7, le=25)
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"


class PassSpec(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the pass.")


class SyntheticSpec(_Strict):
    """Seeded samples generated into the output folder (for recipes without a data set)."""

    kind: Literal["images", "normal"] = Field("images", description="smooth pseudo-images, or standard normal")
    seed: int = 0


class ImageSpec(_Strict):
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    size: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=2)


class DataSpec(_Strict):
    """Samples: a folder/glob/file of .npy/.npz/images (``path``) or ``synthetic`` ones."""

    path: str | None = None
    synthetic: SyntheticSpec | None = None
    count: int | None = Field(None, ge=1, description="Samples to use (calibration default 300).")
    image: ImageSpec | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> DataSpec:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of path or synthetic")
        return self


class ToleranceSpec(_Strict):
    rtol: float | None = Field(None, ge=0)
    atol: float | None = Field(None, ge=0)
    min_cos: float | None = Field(None, ge=-1, le=1)


class TargetSpec(_Strict):
    target: str = Field(description="A registered target name (see `mconv targets`).")
    precision: Precision = "fp32"
    name: str | None = Field(None, pattern=_NAME, description="Output folder name (default <target>_<precision>).")
    required: bool = Field(False, description="Fail the run (instead of skipping) when the runtime is missing.")
    calib: DataSpec | None = Field(None, description="Calibration data for int8 (default: the recipe's calib).")
    batch: int | None = Field(None, ge=1)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The target's own options, as it declares them (`mconv targets NAME` lists them); "
        "file paths are relative to the recipe file.",
    )
    verify: ToleranceSpec | None = Field(None, description="Tolerance for this target (overrides verify.*).")

    @property
    def label(self) -> str:
        return self.name or f"{self.target}_{self.precision}"


class VerifySpec(_Strict):
    enabled: bool = True
    inputs: DataSpec | None = Field(None, description="Verification samples (default: calib for int8, else random).")
    samples: int = Field(1, ge=1)
    rtol: float | None = Field(None, ge=0, description="For every target unless overridden.")
    atol: float | None = Field(None, ge=0)
    min_cos: float | None = Field(None, ge=-1, le=1)
    tolerances: dict[Precision, ToleranceSpec] = Field(default_factory=dict, description="Per precision.")
    timeout: float = Field(600.0, gt=0, description="Seconds for a runner in a child process.")


class BenchSpec(_Strict):
    enabled: bool = False
    warmup: int = Field(2, ge=0)
    iterations: int = Field(10, ge=1)
    threads: int | None = Field(None, ge=1)


_PASSES_SCHEMA = {
    "anyOf": [
        {"const": "default"},
        {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, PassSpec.model_json_schema()]},
        },
    ],
    "default": "default",
    "description": "'default' (the default pipeline) or a list of pass names / {name, options}.",
}


class Recipe(_Strict):
    """A model recipe (``version: 1``)."""

    version: Literal[1]
    name: str | None = Field(None, pattern=_NAME, description="Output folder name (default: the file's stem).")
    description: str = ""
    source: SourceSpec
    inputs: list[InputSpecModel] = Field(default_factory=list)
    export: ExportSpec = Field(default_factory=ExportSpec)
    passes: Annotated[list[PassSpec] | None, WithJsonSchema(_PASSES_SCHEMA)] = None
    calib: DataSpec | None = Field(None, description="Calibration data shared by int8 targets.")
    targets: list[TargetSpec] = Field(min_length=1)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)

    @field_validator("passes", mode="before")
    @classmethod
    def _passes_forms(cls, v: Any) -> Any:
        if v is None or v == "default":
            return None
        if isinstance(v, list):
            return [{"name": p} if isinstance(p, str) else p for p in v]
        return v


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe, for editors."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mconv recipe"
    schema["$defs"]["TargetSpec"]["allOf"] = _target_option_schemas()
    return schema


def _target_option_schemas() -> list[dict[str, Any]]:
    """Per target: its declared options are what ``options`` may hold."""
    from mconv.targets import all_targets

    out = []
    for entry in all_targets():
        if entry.error:
            continue
        try:
            cls = entry.load()
            props = {s.name: s.json_schema() for s in cls.Options.specs()}
        except Exception:  # a broken plugin shows in `mconv targets`
            continue
        names = [entry.name, *cls.aliases]
        out.append(
            {
                "if": {"properties": {"target": {"enum": names}}, "required": ["target"]},
                "then": {
                    "properties": {"options": {"type": "object", "properties": props, "additionalProperties": False}}
                },
            }
        )
    return out


_ALL_KEYS = sorted(
    {
        k
        for m in (
            Recipe,
            SourceSpec,
            InputSpecModel,
            ExportSpec,
            PassSpec,
            SyntheticSpec,
            ImageSpec,
            DataSpec,
            ToleranceSpec,
            TargetSpec,
            VerifySpec,
            BenchSpec,
        )
        for k in m.model_fields
    }
)


# ---- YAML with line numbers and limits ------------------------------------------------------
class _Limit(Exception):
    def __init__(self, problem: str, line: int | None, path: tuple[str, ...] = ()) -> None:
        super().__init__(problem)
        self.problem, self.line, self.path = problem, line, path


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts aliases while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.alias_count = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self.alias_count += 1
            if self.alias_count > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise _Limit(f"more than {MAX_ALIASES} YAML aliases; refusing a possible alias bomb", line)
        return super().compose_node(parent, index)


def _check_size(node: yaml.Node) -> None:
    """Expanded node count (aliases counted each time they are used), linear time via memo."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node, path: tuple[str, ...]) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in active:
            raise _Limit("a recursive YAML alias; refusing it", n.start_mark.line + 1, path)
        active.add(key)
        total = 1
        if isinstance(n, yaml.MappingNode):
            total += sum(size(k, path) + size(v, (*path, str(k.value))) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total += sum(size(c, (*path, str(i))) for i, c in enumerate(n.value))
        active.discard(key)
        memo[key] = total
        if total > MAX_NODES:
            raise _Limit(
                f"more than {MAX_NODES} YAML nodes once aliases are expanded; refusing an alias bomb",
                n.start_mark.line + 1,
                path,
            )
        return total

    size(node, ())


def _check_duplicates(node: yaml.Node, path: tuple[str, ...], seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                if k.value in keys:
                    raise _Limit(
                        f"duplicate key '{k.value}' (first at line {keys[k.value]})",
                        k.start_mark.line + 1,
                        (*path, str(k.value)),
                    )
                keys[k.value] = k.start_mark.line + 1
            _check_duplicates(v, (*path, str(k.value)), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, c in enumerate(node.value):
            _check_duplicates(c, (*path, str(i)), seen)


def _line_map(node: yaml.Node) -> dict[tuple[str, ...], int]:
    """Key path (strings, list indices as digits) -> 1-based line of the key or item."""
    lines: dict[tuple[str, ...], int] = {(): node.start_mark.line + 1}

    def walk(n: yaml.Node, path: tuple[str, ...], depth: int) -> None:
        if depth > 64:
            return
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                p = (*path, str(k.value))
                lines[p] = k.start_mark.line + 1
                walk(v, p, depth + 1)
        elif isinstance(n, yaml.SequenceNode):
            for i, c in enumerate(n.value):
                p = (*path, str(i))
                lines[p] = c.start_mark.line + 1
                walk(c, p, depth + 1)

    walk(node, (), 0)
    return lines


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        loader = _Loader(text)  # the reader already rejects binary content here
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RecipeError(file, None, "", f"not a YAML recipe ({first})") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise RecipeError(file, 1, "", "the file is empty; a recipe starts with `version: 1`")
        _check_size(node)
        _check_duplicates(node, (), set())
        data = loader.construct_document(node)
        return data, _line_map(node)
    except _Limit as e:
        raise RecipeError(file, e.line, ".".join(e.path) or "(top level)", e.problem) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise RecipeError(file, line, "", f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RecipeError(file, None, "", f"invalid YAML: {first}") from None
    except RecursionError:
        raise RecipeError(file, None, "", "YAML nested too deeply") from None
    finally:
        loader.dispose()


# ---- --set overrides ------------------------------------------------------------------------
@dataclass(frozen=True)
class Override:
    """``--set key.path=value``; the value is parsed as a YAML scalar or flow collection."""

    path: tuple[str, ...]
    value: Any
    text: str


def parse_override(text: str) -> Override:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise UsageError(f"--set '{text}': expected key.path=value, e.g. targets.0.precision=fp16")
    try:
        value = yaml.load(raw, Loader=yaml.SafeLoader) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UsageError(f"--set '{text}': the value is not valid YAML ({e})") from None
    return Override(tuple(key.split(".")), value, text)


def _apply_override(data: dict[str, Any], ov: Override, file: str) -> None:
    cur: Any = data
    for i, part in enumerate(ov.path):
        last = i == len(ov.path) - 1
        where = ".".join(ov.path[: i + 1])
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise RecipeError(
                    file, None, f"--set {'.'.join(ov.path)}", f"'{where}' is not an item of a list of {len(cur)}"
                )
            if last:
                cur[int(part)] = ov.value
            else:
                cur = cur[int(part)]
        elif isinstance(cur, dict):
            if last:
                cur[part] = ov.value
            else:
                if cur.get(part) is None:
                    cur[part] = {}
                cur = cur[part]
        else:
            raise RecipeError(file, None, f"--set {'.'.join(ov.path)}", f"'{where}' is inside a scalar value")


# ---- loading -------------------------------------------------------------------------------
@dataclass
class LoadedRecipe:
    """A validated recipe; every path in ``spec`` is absolute and inside ``base_dir``."""

    file: str
    base_dir: Path
    name: str
    spec: Recipe
    overrides: list[str] = field(default_factory=list)


class _Ctx:
    def __init__(self, file: str, lines: dict[tuple[str, ...], int], data: Any, overridden: list[Override]) -> None:
        self.file, self.lines, self.data = file, lines, data
        self.overridden = [o.path for o in overridden]

    def keypath(self, loc: tuple[Any, ...]) -> tuple[str, ...]:
        """Drop pydantic's union/tag elements: keep what exists in the data."""
        out: list[str] = []
        cur = self.data
        for el in loc:
            if isinstance(cur, dict) and (el in cur or str(el) in {str(k) for k in cur}):
                key = el if el in cur else next(k for k in cur if str(k) == str(el))
                out.append(str(el))
                cur = cur[key]
            elif isinstance(cur, list) and isinstance(el, int) and el < len(cur):
                out.append(str(el))
                cur = cur[el]
            elif isinstance(el, str) and el in _ALL_KEYS and isinstance(cur, dict):
                out.append(el)  # a missing key: name it, at its parent's line
                cur = None
            else:
                continue
        return tuple(out)

    def fail(self, path: tuple[str, ...], problem: str) -> RecipeError:
        key = ".".join(path) or "(top level)"
        for op in self.overridden:
            if path[: len(op)] == op:
                return RecipeError(self.file, None, key, f"{problem} (set by --set {'.'.join(op)})")
        p = path
        while p not in self.lines and p:
            p = p[:-1]
        return RecipeError(self.file, self.lines.get(p), key, problem)


def _pydantic_problem(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        if err["loc"][0] == "targets" and len(err["loc"]) == 3:
            from mconv.targets import declared_options

            owners = [t for t, _ in declared_options().get(key, [])]
            if owners:
                return f"unknown key '{key}'; it is an option of target {', '.join(owners)}: put it under `options:`"
        close = difflib.get_close_matches(key, _ALL_KEYS, n=1)
        return f"unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else "")
    if err["type"] == "missing":
        return "required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] not in ("value_error",) and not isinstance(value, (dict, list)):
        msg += f" (got {value!r})"
    return msg


def load_recipe(path: str | Path, overrides: list[Override] | None = None) -> LoadedRecipe:
    """Read, validate and resolve one recipe; raises RecipeError (exit 2) before any work."""
    file = str(path)
    p = Path(path)
    overrides = list(overrides or [])
    if not p.is_file():
        raise RecipeError(file, None, "", "no such recipe file" if not p.exists() else "not a file")
    if p.stat().st_size > MAX_BYTES:
        raise RecipeError(file, None, "", f"larger than {MAX_BYTES} bytes; a recipe is a small YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(file, None, "", f"cannot read it ({e})") from None
    data, lines = _parse_yaml(text, file)
    if not isinstance(data, dict):
        raise RecipeError(file, 1, "", "a recipe is a YAML mapping starting with `version: 1`")
    for ov in overrides:
        _apply_override(data, ov, file)
    ctx = _Ctx(file, lines, data, overrides)
    version = data.get("version")
    if "version" not in data:
        raise ctx.fail(("version",), f"required key is missing; start the recipe with `version: {RECIPE_VERSION}`")
    if version != RECIPE_VERSION or isinstance(version, bool):
        raise ctx.fail(
            ("version",), f"unsupported recipe version {version!r}; this mconv reads version {RECIPE_VERSION}"
        )
    try:
        spec = Recipe.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        err = errs[0]
        more = f" (and {len(errs) - 1} more error(s))" if len(errs) > 1 else ""
        raise ctx.fail(ctx.keypath(tuple(err["loc"])), _pydantic_problem(err) + more) from None
    base = p.resolve().parent
    _check_names(spec, ctx, base)
    _resolve_paths(spec, base, ctx)
    return LoadedRecipe(file, base, spec.name or p.stem, spec, [o.text for o in overrides])


def load_recipes(paths: list[str | Path], overrides: list[Override] | None = None) -> list[LoadedRecipe]:
    """Load every recipe of a batch; names (output folders) must be unique."""
    if not paths:
        raise UsageError("no recipe given: mconv run RECIPE.yaml [RECIPE.yaml ...]")
    loaded = [load_recipe(p, overrides) for p in paths]
    seen: dict[str, str] = {}
    for r in loaded:
        if r.name in seen:
            raise RecipeError(
                r.file, None, "name", f"'{r.name}' is also the name of {seen[r.name]}; give one a distinct `name:`"
            )
        seen[r.name] = r.file
    return loaded


# ---- semantic checks: targets, passes ---------------------------------------------------------
def _check_names(spec: Recipe, ctx: _Ctx, base: Path) -> None:
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


def _check_target_options(t: TargetSpec, target, path: tuple[str, ...], ctx: _Ctx, base: Path) -> None:
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


def _check_pass(p: PassSpec, path: tuple[str, ...], ctx: _Ctx) -> None:
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


# ---- paths -------------------------------------------------------------------------------------
def _inside(base: Path, text: str, path: tuple[str, ...], ctx: _Ctx, *, must_exist: bool = True) -> Path:
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


def _data_path(base: Path, text: str, path: tuple[str, ...], ctx: _Ctx) -> str:
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


def _callable_spec(base: Path, text: str, path: tuple[str, ...], ctx: _Ctx) -> str:
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


def _resource(text: str, path: tuple[str, ...], ctx: _Ctx) -> str:
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


def _resolve_paths(spec: Recipe, base: Path, ctx: _Ctx) -> None:
    src = spec.source
    if src.path:
        src.path = str(_inside(base, src.path, ("source", "path"), ctx))
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
