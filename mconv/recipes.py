"""Kept for callers of ``mconv.recipes``: the recipe package is :mod:`mconv.recipe`."""

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
