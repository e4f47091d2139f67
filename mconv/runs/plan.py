"""Which steps a recipe will run, and which data specs it needs generated."""

from __future__ import annotations

from mconv.recipe import DataSpec, LoadedRecipe, TargetSpec


def plan(recipe: LoadedRecipe) -> list[str]:
    """The step names a recipe will run if nothing fails (for progress bars)."""
    spec = recipe.spec
    steps = []
    if spec.source.factory and not spec.source.checkpoint:
        steps.append("checkpoint")
    steps += ["export", "passes"]
    if synthetic_specs(recipe):
        steps.append("data")
    for t in recipe.targets():
        steps.append(f"build {t.label}")
        if spec.verify.enabled:
            steps.append(f"verify {t.label}")
        if spec.bench.enabled:
            steps.append(f"bench {t.label}")
    return steps


def calib_spec(recipe: LoadedRecipe, t: TargetSpec) -> DataSpec | None:
    if t.precision != "int8":
        return None
    return t.calib or recipe.spec.calib


def synthetic_specs(recipe: LoadedRecipe) -> list[DataSpec]:
    specs = [calib_spec(recipe, t) for t in recipe.spec.targets]
    if recipe.spec.verify.inputs is not None:
        specs.append(recipe.spec.verify.inputs)
    out: list[DataSpec] = []
    for s in specs:
        if s is not None and s.synthetic is not None and s not in out:
            out.append(s)
    return out
