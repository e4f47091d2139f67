"""The ``mconv`` command line: parse, call one library function, print.

``app`` (the Typer app) and ``main``/``entry`` live in :mod:`mconv.cli.app`; each
command module registers its commands on ``app`` when imported here. Options that
several commands share are defined once in :mod:`mconv.cli.common`.
"""

from mconv.cli import convert, run, verify  # noqa: F401  (registers the commands)
from mconv.cli.app import app, entry, main, state

__all__ = ["app", "entry", "main", "state"]
