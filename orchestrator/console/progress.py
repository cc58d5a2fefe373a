"""A live progress bar for a running grid: done / failed / running counts, elapsed time and ETA.

It is fed from the database (the driver's claimed trials by status), never from events, so it
shows what `rtgrid status` would show, under Ray Client too.
"""

from __future__ import annotations

from typing import Any

from db.models import FINISHED, TrialStatus


class GridProgress:
    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total = total
        self.counts: dict[str, int] = {}
        self._bar: Any = None
        self._task: Any = None
        if not quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("grid", total=total, detail=self.detail())
            self._bar.start()

    @property
    def done(self) -> int:
        return sum(self.counts.get(status, 0) for status in FINISHED)

    def detail(self) -> str:
        get = self.counts.get
        return (f"ok {get(TrialStatus.COMPLETED, 0)} failed {get(TrialStatus.FAILED, 0)} "
                f"running {get(TrialStatus.RUNNING, 0)}")

    def set_counts(self, counts: dict[str, int]) -> None:
        self.counts = dict(counts)
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.done, self.total), detail=self.detail())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
