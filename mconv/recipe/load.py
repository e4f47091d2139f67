"""load_recipe / load_recipes: read, apply overrides, validate, check and resolve."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mconv.errors import UsageError
from mconv.recipe.checks import check_names, resolve_paths
from mconv.recipe.errors import RecipeError
from mconv.recipe.schema import ALL_KEYS, RECIPE_VERSION, Recipe, TargetSpec
from mconv.recipe.yaml_io import MAX_BYTES, KeyLocator, Override, apply_override, parse_yaml


@dataclass
class LoadedRecipe:
    """A validated recipe; every path in ``spec`` is absolute and inside ``base_dir``."""

    file: str
    base_dir: Path
    name: str
    spec: Recipe
    overrides: list[str] = field(default_factory=list)
    # The target labels this run builds (``mconv run --shard``); None: every target.
    only: list[str] | None = None

    def targets(self) -> list[TargetSpec]:
        """The target entries this run builds, in the recipe's order."""
        return [t for t in self.spec.targets if self.only is None or t.label in self.only]


def _pydantic_problem(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        if err["loc"][0] == "targets" and len(err["loc"]) == 3:
            from mconv.targets import declared_options

            owners = [t for t, _ in declared_options().get(key, [])]
            if owners:
                return f"unknown key '{key}'; it is an option of target {', '.join(owners)}: put it under `options:`"
        close = difflib.get_close_matches(key, ALL_KEYS, n=1)
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
    data, lines = parse_yaml(text, file)
    if not isinstance(data, dict):
        raise RecipeError(file, 1, "", "a recipe is a YAML mapping starting with `version: 1`")
    for ov in overrides:
        apply_override(data, ov, file)
    ctx = KeyLocator(file, lines, data, overrides)
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
    check_names(spec, ctx, base)
    resolve_paths(spec, base, ctx)
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
