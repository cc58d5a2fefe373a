"""Run one spec's kernel in this process (a debugging aid: no Ray, no database)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from orchestrator.errors import UserError
from orchestrator.plan.grids import DEFAULT_MAX_SPECS, load_grid


def _format_metrics(epoch: int, metrics: dict[str, Any]) -> str:
    shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    return f"epoch {epoch:>4}  {shown}"


def run_one_spec(grid_name: str, index: int, data_root: str | None, artifacts: str, source_path: str | None,
                 threads: int | None, download: bool = False, max_specs: int = DEFAULT_MAX_SPECS
                 ) -> Iterator[str]:
    import queue
    import threading

    import torch

    from workers.trainable import KernelContext, execute

    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    grid = load_grid(grid_name, max_specs)
    if not 0 <= index < len(grid.specs):
        raise UserError(f"--index {index} is outside the grid ({len(grid.specs)} specs)")
    spec = grid.specs[index]
    torch.set_num_threads(threads or os.cpu_count() or 1)
    ref = spec.source_ref
    if source_path is None and ref is not None and ref.scheme == "file":
        source_path = grid.source_files.get((str(ref), spec.source_checksum or ""))
    if ref is not None and ref.scheme == "spec" and source_path is None:
        raise UserError(f"spec {index} needs the checkpoint of source trial {ref.name[:12]}: pass --source-path")
    yield f"spec {index} of {grid.name}: {spec.spec_hash}"
    yield spec.canonical_json()
    lines: queue.Queue[str | BaseException | None] = queue.Queue()
    ctx = KernelContext(data_root=data_root, artifacts_dir=artifacts, source_path=source_path, download=download)

    def work() -> None:
        try:
            final = execute(spec.to_dict(), ctx, lambda e, m: lines.put(_format_metrics(e, m)))
            final.pop("artifacts", None)
            lines.put("final  " + " ".join(f"{k}={v}" for k, v in final.items()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            lines.put(exc)
        finally:
            lines.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (item := lines.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def convert_source(input_path: str, output_path: str) -> str:
    from workers.trainable import convert_trusted_checkpoint

    return convert_trusted_checkpoint(input_path, output_path)
