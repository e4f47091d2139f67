"""``mconv run`` and ``mconv recipe`` (registered on the app when mconv.cli is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mconv.cli.app import app
from mconv.cli.common import JsonOpt, console, emit

recipe_app = typer.Typer(
    help="Recipe tools: the JSON Schema for editors, and validation without running.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(recipe_app, name="recipe")
report_app = typer.Typer(help="Run reports: merge the shards of a batch.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(report_app, name="report")

RecipesArg = Annotated[list[Path], typer.Argument(metavar="RECIPE", help="YAML recipe files.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a recipe value: key.path=value (YAML value), e.g. targets.0.precision=fp16."),
]


@app.command("run")
def run(
    recipes: RecipesArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder (one subfolder per recipe).")] = Path(
        "mconv_out"
    ),
    set_: SetOpt = None,
    jobs: Annotated[int, typer.Option("-j", "--jobs", help="Recipes run in parallel processes (local executor).")] = 1,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            metavar="I/N",
            help="Run only shard I of N (1 <= I <= N) of the batch's jobs (one job: a target of a recipe); "
            "the split depends on the jobs only, not on the order of the files. "
            "`mconv report merge` combines the N output folders.",
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            metavar="local|ray[:ADDRESS]",
            help="local: -j processes on this machine; ray: each recipe a Ray task (a private local Ray "
            "instance, or the cluster at ADDRESS; the output folder must be shared by its nodes).",
        ),
    ] = "local",
    as_json: JsonOpt = False,
):
    """Run recipes: export, passes, build and verify each target, bench; reports per recipe and a summary.

    Exit 0 when every step passed (or was skipped for a missing runtime), 3 when only verification
    failed, 1 otherwise; an invalid recipe is exit 2 before anything runs.
    """
    from mconv.errors import UsageError
    from mconv.recipe import load_recipes, parse_override
    from mconv.runs import RunOptions, run_batch
    from mconv.runs.scheduler import parse_executor
    from mconv.runs.shard import parse_shard

    if jobs < 1:
        raise UsageError("-j/--jobs must be >= 1")
    parse_executor(executor)
    split = parse_shard(shard) if shard is not None else None
    overrides = [parse_override(s) for s in set_ or []]
    loaded = load_recipes([str(r) for r in recipes], overrides)
    opts = RunOptions(out_dir=output, jobs=jobs, as_json=as_json, shard=split, executor=executor)
    summary = run_batch(loaded, opts)
    _finish(summary, as_json)


def _finish(summary, as_json: bool) -> None:
    """Print the summary; a failed batch is an MconvError with the batch's exit code."""
    from mconv.errors import MconvError
    from mconv.runs import failure_message

    if not summary["ok"]:
        if not as_json:
            _print_summary(summary)
        # with --json, the summary is printed in the failure object
        raise MconvError(failure_message(summary), exit_code=summary["exit_code"], report=summary)
    emit(summary, as_json, _print_summary)


def _print_summary(s) -> None:
    from rich.table import Table

    t = Table(title=f"mconv run: {len(s['recipes'])} recipe(s) in {s['seconds']:.1f} s", title_justify="left")
    for col in ("recipe", "status", "ok", "failed", "skipped", "seconds", "report"):
        t.add_column(col)
    for r in s["recipes"]:
        color = "green" if r["exit_code"] == 0 else "red"
        t.add_row(
            r["name"],
            f"[{color}]{r['status']}[/{color}]",
            str(r["steps"]["ok"]),
            str(r["steps"]["failed"]),
            str(r["steps"]["skipped"]),
            f"{r['seconds']:.1f}",
            r["report"] or "",
        )
    con = console()
    con.print(t)
    con.print(f"summary: {Path(s['out_dir']) / 'summary.md'}")


@report_app.command("merge")
def merge(
    dirs: Annotated[list[Path], typer.Argument(metavar="DIR", help="The output folders of the N shards.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The merged output folder.")] = Path("mconv_out"),
    as_json: JsonOpt = False,
):
    """Merge the output folders of `mconv run --shard I/N` (all N shards) into the reports and
    exit code a single run would give."""
    from mconv.runs.merge import merge_runs

    _finish(merge_runs(list(dirs), output), as_json)


@recipe_app.command("schema")
def schema():
    """Print the JSON Schema of recipes (for editors: yaml-language-server, VS Code)."""
    import json
    import sys

    from mconv.recipe import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@recipe_app.command("check")
def check(recipes: RecipesArg, set_: SetOpt = None, as_json: JsonOpt = False):
    """Validate recipes without running them (exit 2 on the first invalid one)."""
    from mconv.recipe import load_recipes, parse_override
    from mconv.runs import plan

    loaded = load_recipes([str(r) for r in recipes], [parse_override(s) for s in set_ or []])
    report = {
        "command": "recipe check",
        "recipes": [{"file": r.file, "name": r.name, "steps": plan(r)} for r in loaded],
    }

    def render(rep):
        con = console()
        for r in rep["recipes"]:
            con.print(f"{r['file']}: ok ({r['name']}: {', '.join(r['steps'])})")

    emit(report, as_json, render)
