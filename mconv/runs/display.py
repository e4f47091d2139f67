"""Progress of a batch: rich bars on a terminal, or one plain line per finished step."""

from __future__ import annotations

import time
from typing import Any


def _describe(rec: dict[str, Any]) -> str:
    text = f"{rec['status']} ({rec['seconds']:.1f} s)"
    if rec.get("error"):
        text += f": {rec['error']}"
    elif rec.get("reason"):
        text += f": {rec['reason']}"
    return text


class PlainDisplay:
    """One line per finished step; for CI logs and --json."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.t0 = time.perf_counter()

    def _line(self, text: str) -> None:
        self.stream.write(f"[{time.perf_counter() - self.t0:7.1f}s] {text}\n")
        self.stream.flush()

    def started(self, name: str, file: str, steps: list[str]) -> None:
        self._line(f"{name}: started ({file}, {len(steps)} steps)")

    def event(self, kind: str, name: str, rec: dict[str, Any]) -> None:
        if kind == "end":
            self._line(f"{name}: {rec['step']} {_describe(rec)}")

    def finished(self, name: str, report: dict[str, Any]) -> None:
        self._line(f"{name}: {report['status'].upper()} (exit {report['exit_code']}) in {report['seconds']:.1f} s")

    def close(self) -> None:
        pass


class RichDisplay:
    """A progress bar per recipe with the running step beside a spinner."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(highlight=False)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[recipe]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def started(self, name: str, file: str, steps: list[str]) -> None:
        self.tasks[name] = self.progress.add_task("starting", total=len(steps), recipe=name)

    def event(self, kind: str, name: str, rec: dict[str, Any]) -> None:
        task = self.tasks[name]
        if kind == "start":
            self.progress.update(task, description=rec["step"])
            return
        self.progress.advance(task)
        color = {"ok": "green", "skipped": "yellow"}.get(rec["status"], "red")
        self.progress.console.print(f"{name}: {rec['step']} [{color}]{_describe(rec)}[/{color}]", markup=True)

    def finished(self, name: str, report: dict[str, Any]) -> None:
        task = self.tasks[name]
        total = self.progress.tasks[task].total if task in self.progress.task_ids else None
        ok = report["status"] == "passed"
        self.progress.update(
            task,
            completed=total,
            description="[green]passed[/green]" if ok else f"[red]failed (exit {report['exit_code']})[/red]",
        )

    def close(self) -> None:
        self.progress.stop()
