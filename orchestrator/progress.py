"""A live progress bar for a running grid: done / failed counts, throughput and ETA."""

from __future__ import annotations

from typing import Any


class GridProgress:
    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total = total
        self.completed = 0
        self.failed = 0
        self.running = 0
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
            self._task = self._bar.add_task("grid", total=total, detail=self._detail())
            self._bar.start()

    def _detail(self) -> str:
        return f"ok {self.completed} failed {self.failed} running {self.running}"

    def update(self, event: str, spec_hash: str) -> None:
        if event == "started":
            self.running += 1
        elif event == "retrying":
            self.running = max(0, self.running - 1)
        elif event in ("final", "failed"):
            self.completed += event == "final"
            self.failed += event == "failed"
            self.running = max(0, self.running - 1)
        else:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed + self.failed, detail=self._detail())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
