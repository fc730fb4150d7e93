"""Sweep progress on stderr: a live bar on a terminal, one plain line per host otherwise."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class SweepProgress:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.total = 0
        self.done = 0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> SweepProgress:
        if self.live:
            self._bar = Progress(
                TextColumn("probing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[last]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, value, traceback)

    def start(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._task = self._bar.add_task("sweep", total=total, last="")
        else:
            self.console.print(f"fleetscan: probing {total} host(s)", markup=False)

    def advance(self, host: str, status: str) -> None:
        self.done += 1
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=1, last=f"{host}: {status}")
        else:
            self.console.print(
                f"fleetscan: [{self.done}/{self.total}] {host}: {status}", markup=False
            )
