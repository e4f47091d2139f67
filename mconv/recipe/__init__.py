"""Recipes: one validated YAML file per model that says where it comes from, how to
export it, which targets and precisions to build, with what data, and what accuracy
to demand. ``mconv run`` executes them (see :mod:`mconv.runs`).

Loading is strict and happens before any work starts: unknown keys, wrong types,
unknown target or pass names, a bad ``version``, missing files and paths that escape
the recipe's folder are :class:`RecipeError` (exit 2) whose one-line message names
the file, the line and the key path, e.g.
``recipes/resnet50.yaml:12: targets.0.precision: Input should be 'fp32', 'fp16' or 'int8'``.

YAML is read with ``yaml.SafeLoader`` only; a document over :data:`MAX_BYTES`, with
more than :data:`MAX_ALIASES` aliases, more than :data:`MAX_NODES` nodes once aliases
are expanded, or a recursive alias is refused (alias bombs).

Modules: :mod:`.schema` (the pydantic models and the JSON Schema), :mod:`.yaml_io`
(safe loading, limits, line numbers, ``--set``), :mod:`.checks` (targets, passes,
options, paths), :mod:`.load` (load_recipe, load_recipes), :mod:`.errors` (RecipeError).
"""

from mconv.recipe.errors import RecipeError
from mconv.recipe.load import LoadedRecipe, load_recipe, load_recipes
from mconv.recipe.schema import (
    RECIPE_VERSION,
    BenchSpec,
    DataSpec,
    Dtype,
    ExportSpec,
    ImageSpec,
    InputSpecModel,
    PassSpec,
    Precision,
    Recipe,
    SourceSpec,
    SyntheticSpec,
    TargetSpec,
    ToleranceSpec,
    VerifySpec,
    json_schema,
)
from mconv.recipe.yaml_io import MAX_ALIASES, MAX_BYTES, MAX_NODES, Override, parse_override

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_NODES",
    "RECIPE_VERSION",
    "BenchSpec",
    "DataSpec",
    "Dtype",
    "ExportSpec",
    "ImageSpec",
    "InputSpecModel",
    "LoadedRecipe",
    "Override",
    "PassSpec",
    "Precision",
    "Recipe",
    "RecipeError",
    "SourceSpec",
    "SyntheticSpec",
    "TargetSpec",
    "ToleranceSpec",
    "VerifySpec",
    "json_schema",
    "load_recipe",
    "load_recipes",
    "parse_override",
]
