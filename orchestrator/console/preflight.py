"""`rtgrid plan`'s preflight on the driver: are the datasets and the source weights a grid needs where the
workers will look? (Workers on other nodes see their own disks: this checks the driver's.)"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.plan.grids import Grid
from orchestrator.plan.sources import SourceRef


@dataclass(frozen=True)
class Check:
    ok: bool
    what: str  # "dataset cifar10", "source robustness:imagenet_l2_3_0"
    detail: str  # the path found, or why not


def _dataset_checks(names: list[str], data_root: str | None) -> list[Check]:
    from workers.trainable import dataset_location

    checks = []
    for name in names:
        where = dataset_location(name, data_root)
        if where is None:
            checks.append(Check(True, f"dataset {name}", "built in (no files)"))
        elif data_root is None and not name.startswith("imagefolder:"):
            checks.append(Check(False, f"dataset {name}", "needs a data root (--data-root or RTGRID_DATA)"))
        elif where.exists():
            checks.append(Check(True, f"dataset {name}", str(where)))
        else:
            checks.append(Check(False, f"dataset {name}", f"not found: {where}"))
    return checks


def _source_checks(grid: Grid, data_root: str | None) -> list[Check]:
    from workers.trainable import KernelInputError, resolve_source_path

    checks = []
    sources = sorted({s.source for s in grid.transfers if s.source is not None})
    for source in sources:
        ref = SourceRef.parse(source)
        if ref.scheme == "spec":
            continue  # trained by this grid's source stage
        if ref.is_scratch:
            checks.append(Check(True, f"source {source}", "random init (no file)"))
            continue
        given = next((path for (name, _), path in grid.source_files.items() if name == source), None)
        try:
            checks.append(Check(True, f"source {source}", str(resolve_source_path(source, data_root, given))))
        except KernelInputError as exc:
            checks.append(Check(False, f"source {source}", str(exc)))
    return checks


def preflight(grid: Grid, data_root: str | None) -> list[Check]:
    """One check per dataset (ID and natural OOD sets) and per named source the grid uses."""
    names: dict[str, None] = {}
    for spec in grid.specs:
        names[spec.dataset] = None
        if spec.ood is not None and spec.ood in _natural_shifts():
            names[spec.ood] = None
    return _dataset_checks(list(names), data_root) + _source_checks(grid, data_root)


def _natural_shifts() -> tuple[str, ...]:
    from workers.trainable import catalog

    return tuple(catalog.OOD_SETS)


def completed_in_database(grid: Grid, db_url: str | None) -> set[str] | None:
    """The grid's spec hashes already completed in the database (read-only); None when there is no database
    yet (a missing SQLite file is never created)."""
    from pathlib import Path

    from db.models import TrialStatus
    from db.session import is_sqlite, parse_url, resolve_url, sqlite_path
    from orchestrator.results.query import ReadOnlyDatabase

    url = resolve_url(db_url)
    parsed = parse_url(url)
    if is_sqlite(parsed):
        path = sqlite_path(parsed)
        if path is None or not Path(path).is_file():
            return None
    hashes = [s.spec_hash for s in grid.specs]
    done: set[str] = set()
    with ReadOnlyDatabase(url) as database:
        for start in range(0, len(hashes), 1000):
            chunk = hashes[start:start + 1000]
            names = {f"h{i}": h for i, h in enumerate(chunk)}
            sql = (f"SELECT spec_hash FROM trials WHERE status = :status AND spec_hash IN "
                   f"({', '.join(':' + n for n in names)})")
            done.update(str(r[0]) for r in database.rows(sql, {"status": TrialStatus.COMPLETED.value, **names}).rows)
    return done
