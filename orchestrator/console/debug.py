"""Run one spec's kernel in this process (a debugging aid: no Ray, no database)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UserError
from orchestrator.plan.grids import DEFAULT_MAX_SPECS, load_grid
from orchestrator.plan.spec import TrialSpec


def _format_metrics(epoch: int, metrics: dict[str, Any]) -> str:
    shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    return f"epoch {epoch:>4}  {shown}"


@dataclass(frozen=True)
class ChosenSpec:
    spec: TrialSpec
    label: str  # "spec 3 of smoke", "trial 4c87f36e4671 of the database"
    source_path: str | None  # where the spec's source checkpoint lies, when known here


def _by_hash(specs: list[TrialSpec], prefix: str, where: str) -> int:
    matches = [i for i, s in enumerate(specs) if s.spec_hash.startswith(prefix.lower())]
    if not matches:
        raise UserError(f"no spec of {where} has a hash starting {prefix!r}")
    if len(matches) > 1:
        raise UserError(f"{len(matches)} specs of {where} have a hash starting {prefix!r}: give more characters")
    return matches[0]


def choose_spec(grid_name: str | None, index: int | None, spec_hash: str | None, db_url: str | None,
                max_specs: int = DEFAULT_MAX_SPECS) -> ChosenSpec:
    """The spec to replay: by --index or --hash in a grid, or by --hash from the database (a failed trial)."""
    if spec_hash is not None and len(spec_hash) < 6:
        raise UserError("--hash needs at least 6 characters of the spec hash")
    if grid_name is None:
        if spec_hash is None:
            raise UserError("give --preset NAME|FILE (with --index or --hash), or --hash alone to replay a trial "
                            "of the database")
        return _from_database(spec_hash, db_url)
    grid = load_grid(grid_name, max_specs)
    if spec_hash is not None:
        if index is not None:
            raise UserError("give --index or --hash, not both")
        index = _by_hash(grid.specs, spec_hash, f"grid {grid.name}")
    index = 0 if index is None else index
    if not 0 <= index < len(grid.specs):
        raise UserError(f"--index {index} is outside the grid ({len(grid.specs)} specs)")
    spec = grid.specs[index]
    ref = spec.source_ref
    path = grid.source_files.get((str(ref), spec.source_checksum or "")) if ref is not None else None
    return ChosenSpec(spec, f"spec {index} of {grid.name}", path)


def _from_database(prefix: str, db_url: str | None) -> ChosenSpec:
    from db.models import TrialStatus
    from orchestrator.results.query import ReadOnlyDatabase

    with ReadOnlyDatabase(db_url) as database:
        rows = database.rows(
            "SELECT spec_hash, spec_json FROM trials WHERE spec_hash LIKE :prefix LIMIT 2",
            {"prefix": prefix.lower() + "%"}).rows
        if not rows:
            raise UserError(f"no trial in the database has a hash starting {prefix!r}")
        if len(rows) > 1:
            raise UserError(f"several trials have a hash starting {prefix!r}: give more characters")
        spec = TrialSpec.from_json(rows[0][1])
        source_path = None
        source_hash = spec.source_hash()
        if source_hash is not None:
            found = database.rows(
                "SELECT checkpoint_uri FROM trials WHERE spec_hash = :h AND status = :s",
                {"h": source_hash, "s": TrialStatus.COMPLETED.value}).rows
            source_path = found[0][0] if found else None
    return ChosenSpec(spec, f"trial {spec.spec_hash[:12]} of the database", source_path)


def run_one_spec(chosen: ChosenSpec, data_root: str | None, artifacts: str, source_path: str | None,
                 threads: int | None, download: bool = False) -> Iterator[str]:
    import queue
    import threading

    import torch

    from workers.trainable import KernelContext, execute

    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    spec = chosen.spec
    torch.set_num_threads(threads or os.cpu_count() or 1)
    ref = spec.source_ref
    source_path = source_path or chosen.source_path
    if ref is not None and ref.scheme == "spec" and source_path is None:
        raise UserError(f"{chosen.label} needs the checkpoint of source trial {ref.name[:12]}: pass --source-path")
    yield f"{chosen.label}: {spec.spec_hash}"
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
