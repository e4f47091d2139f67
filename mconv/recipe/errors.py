"""The one error an invalid recipe raises."""

from __future__ import annotations

from mconv.errors import UsageError


class RecipeError(UsageError):
    """An invalid recipe (exit 2): the message names the file, line and key path."""

    def __init__(self, file: str, line: int | None, key: str, problem: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")
        self.file, self.line, self.key, self.problem = file, line, key, problem
