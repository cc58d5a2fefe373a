"""The Python API to results: `results_frame()` and the source labels every report uses."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import pandas as pd

from db.models import FINAL_METRICS, TrialInit, TrialStatus
from orchestrator.errors import UserError
from orchestrator.plan.sources import SCRATCH, SourceRef
from orchestrator.results.query import Database, ReadOnlyDatabase, reading
from workers.trainable import METHODS

# Labels of the published sources (Utrera et al.'s four ResNet-50s); other robustness:<name>
# files get their name.
PUBLISHED_LABELS = {
    "robustness:imagenet_l2_3_0": "l2-3",
    "robustness:imagenet_linf_4": "linf-4",
    "robustness:imagenet_linf_8": "linf-8",
}
NATURAL = "natural"
# Methods whose backbone starts from random weights whatever `source` names (the catalog's
# `random_init` trait): the ER testbed (retrain: the source only serves ASR) AND the distilling
# ones (renofeation, delta-r: the source is their teacher). Not a report filter: reports and frames
# read the stored `init` column (pretrained | random | distilled, db.models.TrialInit), which the
# planner derives from the same traits and which tells the two apart.
RANDOM_INIT_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.random_init)

Lookup = Mapping[str, str] | Callable[[str], str | None]


def source_label(source: str | None, lookup: Lookup | None = None) -> str:
    """A short human name for a trial's `source` column.

    torchvision:<arch> -> "natural"; robustness:imagenet_l2_3_0 / _linf_4 / _linf_8 -> "l2-3" /
    "linf-4" / "linf-8"; spec:<hash> -> the method of the source trial with that spec_hash
    (natural, pgd-l2, pgd-linf, ...) found through `lookup` (a mapping or a function from
    spec_hash to method), or "spec:<first 12 hex>" when unknown; scratch -> "scratch";
    file:<path> -> "file:<file name>"; None (source trials) -> "-".
    """
    if source is None or (isinstance(source, float) and source != source):
        return "-"
    ref = SourceRef.maybe(source)
    if ref is None or ref.is_scratch:
        return source
    if ref.scheme == "torchvision":
        return NATURAL
    if ref.scheme == "robustness":
        return PUBLISHED_LABELS.get(source, ref.name)
    if ref.scheme == "spec":
        method = None
        if lookup is not None:
            method = lookup(ref.name) if callable(lookup) else lookup.get(ref.name)
        return method or f"spec:{ref.name[:12]}"
    if ref.scheme == "file":
        return "file:" + PurePath(ref.name).name
    return source


def source_order(label: str) -> tuple[int, str]:
    """Sort key: natural first, scratch last, the rest alphabetical (l2-3 < linf-4 < linf-8)."""
    return (0 if label == NATURAL else 2 if label == SCRATCH else 1, label)


def source_methods(db: ReadOnlyDatabase) -> dict[str, str]:
    """spec_hash -> method of every source trial: the lookup for `source_label`."""
    result = db.rows("SELECT spec_hash, method FROM trials WHERE kind = 'source'")
    return {str(h).strip(): str(m) for h, m in result.rows}


def label_sources(sources: Iterable[str | None], lookup: Lookup | None) -> dict[str | None, str]:
    """source -> label, made unique: two different sources with one label get a hash suffix."""
    distinct = list(dict.fromkeys(sources))
    labels = {s: source_label(s, lookup) for s in distinct}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    for source, label in labels.items():
        ref = SourceRef.maybe(source)
        if counts[label] > 1 and ref is not None and ref.scheme == "spec":
            labels[source] = f"{label}@{ref.name[:8]}"
    return labels


def add_source_labels(frame: pd.DataFrame, db: ReadOnlyDatabase, column: str = "source") -> pd.DataFrame:
    """`frame` with a `source_label` column next to `column`."""
    out = frame.copy()
    if out.empty:
        out["source_label"] = pd.Series(dtype=object)
        return out
    labels = label_sources(out[column].tolist(), source_methods(db))
    out["source_label"] = out[column].map(lambda s: labels.get(s, source_label(s)))
    return out


def require_experiment(db: ReadOnlyDatabase, experiment: str) -> int:
    found = db.rows("SELECT id FROM experiments WHERE name = :name", {"name": experiment}).rows
    if not found:
        names = [r[0] for r in db.rows("SELECT name FROM experiments ORDER BY name").rows]
        known = f" (known: {', '.join(names[:10])}{', …' if len(names) > 10 else ''})" if names else " (none yet)"
        raise UserError(f"unknown experiment {experiment!r}{known}")
    return int(found[0][0])


def nullable_ints(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Integer columns that may hold NULL (subset_size, blocks, …) as pandas' nullable Int64."""
    for column in columns:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def require_rows(frame: pd.DataFrame, what: str, experiment: str) -> None:
    """A report or plot with nothing to show is a user error that says what is missing."""
    if frame.empty:
        raise UserError(f"experiment {experiment!r} has no {what}")


def trial_frame(db: ReadOnlyDatabase, experiment: str, columns: str, where: str = "",
                params: dict[str, Any] | None = None) -> pd.DataFrame:
    """`columns` of the experiment's trials (alias `t`) matching `where`; unknown experiment: UserError."""
    require_experiment(db, experiment)
    frame = db.frame(experiment_trials_sql(columns, where), {"experiment": experiment, **(params or {})})
    return nullable_ints(frame, ("blocks", "subset_size", "seed", "epoch"))


FLOAT_COLUMNS = (*FINAL_METRICS, "duration_s")
INT_COLUMNS = ("trial_id", "blocks", "subset_size", "seed", "epochs", "last_epoch")


def results_frame(experiment: str, db: Database | Any = None) -> pd.DataFrame:
    """All trials of one experiment as a DataFrame: one row per trial, from the `results` view.

    Parameters
    ----------
    experiment:
        The experiment name (``experiments.name``, e.g. ``"utrera2021"``); an unknown name
        raises ``orchestrator.errors.UserError`` listing the known ones.
    db:
        A database URL (``"sqlite:///utrera.db"``, ``"postgresql://user@host/db"``); ``None``
        means ``$RTGRID_DB``, else ``sqlite:///rtgrid.sqlite``. An open
        ``orchestrator.results.query.ReadOnlyDatabase`` or a ``db.repository.Repository`` works too.
        The database is opened read-only: this function never writes.

    Returns
    -------
    pandas.DataFrame with one row per trial of the experiment, in ``trial_id`` order, columns:

    - ``experiment``, ``trial_id``, ``spec_hash``, ``status`` (pending / running / completed /
      failed / cancelled);
    - the spec's key fields: ``kind`` (source / transfer), ``arch``, ``source`` (raw, e.g.
      ``torchvision:resnet50``, ``robustness:imagenet_l2_3_0``, ``spec:<hash>``, ``scratch``),
      ``source_label`` (short name: natural, l2-3, linf-4, linf-8, or the source trial's
      method such as pgd-l2 for ``spec:`` sources; see ``source_label``), ``dataset``, ``ood``,
      ``method``, ``blocks`` and ``subset_size`` (nullable ``Int64``; ``subset_size`` <NA> =
      the full training set), ``seed``, ``epochs``;
    - ``init``: how the backbone starts, ``pretrained`` (from the source's weights), ``random``
      (random weights, nothing pre-trained: retrain and source ``scratch``, the ER testbed; and every
      source trial) or ``distilled`` (random weights, the source as a teacher: renofeation, delta-r).
      A retrain trial keeps the natural source for its ASR attack, so its ``source_label`` reads
      "natural": group by ``init`` too, or keep ``init == "pretrained"``, to compare sources;
    - final metrics as FRACTIONS in [0, 1] (NaN when not measured or not finished):
      ``test_acc``, ``ood_acc``, ``asr``, ``adv_acc``, ``clean_acc``, ``robust_acc``;
      ``er`` (effective robustness at the last epoch, a fraction in [-1, 1]);
      ``duration_s``; ``last_epoch`` (last epoch with metrics) and ``finished_at``.

    Per-epoch values are in the ``epoch_metrics`` table (``rtgrid export E --table epochs``).

    Example
    -------
    >>> df = results_frame("utrera2021", db="sqlite:///utrera.db")
    >>> done = df[(df.status == "completed") & (df.kind == "transfer")]
    >>> done.groupby(["dataset", "subset_size", "init", "source_label"]).test_acc.mean().unstack()
    """
    with reading(db) as database:
        require_experiment(database, experiment)
        frame = database.frame("SELECT * FROM results WHERE experiment = :experiment ORDER BY trial_id",
                               {"experiment": experiment})
        frame = add_source_labels(frame, database)
    if "source_label" in frame:
        position = list(frame.columns).index("source") + 1
        frame.insert(position, "source_label", frame.pop("source_label"))
    for column in FLOAT_COLUMNS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    if "spec_hash" in frame:
        frame["spec_hash"] = frame["spec_hash"].astype(str).str.strip()
    return nullable_ints(frame, INT_COLUMNS)


def completed_transfers_sql(alias: str = "t") -> str:
    """SQL condition: the trial of table alias `alias` is a completed transfer (what the reports read)."""
    return f"{alias}.kind = 'transfer' AND {alias}.status = '{TrialStatus.COMPLETED.value}'"


def pretrained_sql(alias: str = "t") -> str:
    """SQL condition: the trial of table alias `alias` starts from its source's weights (`init`)."""
    return f"{alias}.init = '{TrialInit.PRETRAINED.value}'"


# --- one trial per seed in a reported cell ---------------------------------------------------------

_SHOWN_FIELDS = 6


@functools.lru_cache(maxsize=1 << 16)  # a report checks the same trials for several tables
def _spec_fields(spec_json: str) -> tuple[tuple[str, str, Any], ...]:
    """A spec as flat (field, top-level field, value) triples (params as params.<name>; lists as tuples)."""
    spec = json.loads(spec_json)
    params = spec.pop("params", None) or {}
    fields = [*((name, name, value) for name, value in spec.items()),
              *((f"params.{name}", "params", value) for name, value in params.items())]
    return tuple((name, top, tuple(value) if isinstance(value, list) else value) for name, top, value in fields)


def _compared(spec_json: str, ignored: set[str]) -> dict[str, Any]:
    """The spec's fields that a cell's trials must share ("params" in `ignored` ignores every params.<name>)."""
    return {name: value for name, top, value in _spec_fields(spec_json) if name not in ignored and top not in ignored}


def _differing_fields(specs: Sequence[dict[str, Any]]) -> list[str]:
    names = sorted({name for spec in specs for name in spec})
    return [name for name in names if len({spec.get(name) for spec in specs}) > 1]


def _cell_text(cell: Sequence[str], values: Sequence[Any]) -> str:
    shown = ["full" if name == "subset_size" and pd.isna(value) else "-" if pd.isna(value) else str(value)
             for name, value in zip(cell, values, strict=True)]
    return ", ".join(f"{name}={value}" for name, value in zip(cell, shown, strict=True))


def require_one_trial_per_seed(frame: pd.DataFrame, cell: Sequence[str], report: str,
                               pooled: Iterable[str] = ()) -> None:
    """Refuse to report a cell that holds two trials of one seed differing in more than the seed.

    `report` names the caller in the message ("report utrera-table7", "plot blocks").
    `frame` has one row per trial (or per epoch: rows of one trial are counted once when a
    `trial_id` column is there) with the `cell` columns, `seed` and `spec_json`. `pooled`: spec
    fields the report averages over on purpose (the demo pools block settings). Every report and
    plot calls this before it aggregates, so a mean or CI never silently mixes settings.
    """
    if frame.empty:
        return
    rows = frame.drop_duplicates("trial_id") if "trial_id" in frame else frame
    key = [*cell, "seed"]
    duplicated = rows[rows.duplicated(subset=key, keep=False)].reset_index(drop=True)
    if duplicated.empty:
        return
    ignored = {"seed", *pooled}
    # each spec parsed once; a group is fine when its trials agree on every compared field
    compared = [_compared(text, ignored) for text in duplicated["spec_json"]]
    residual = pd.Series([tuple(sorted(c.items())) for c in compared])
    mixed = residual.groupby([duplicated[k] for k in key], dropna=False, sort=True).transform("nunique") > 1
    for values, group in duplicated[mixed].groupby(key, dropna=False, sort=True):
        differing = _differing_fields([compared[i] for i in group.index])
        more = f", … {len(differing) - _SHOWN_FIELDS} more" if len(differing) > _SHOWN_FIELDS else ""
        raise UserError(
            f"{report}: cell {_cell_text(cell, values[:-1])} holds {len(group)} trials for seed {values[-1]} "
            f"that differ in {', '.join(differing[:_SHOWN_FIELDS])}{more}; a report pools only trials that differ "
            "in the seed: put such trials in separate experiments")


def trial_specs(db: ReadOnlyDatabase, experiment: str, where: str = "", params: Mapping[str, Any] | None = None
                ) -> pd.DataFrame:
    """trial_id and spec_json of the experiment's trials matching `where`: one row per trial, for
    require_one_trial_per_seed where the report itself reads one row per epoch."""
    return db.frame(experiment_trials_sql("t.id AS trial_id, t.spec_json", where),
                    {"experiment": experiment, **(params or {})})


def experiment_trials_sql(columns: str = "t.*", where: str = "") -> str:
    """SELECT over the trials of experiment :experiment (joined through experiment_trials)."""
    return (f"SELECT {columns} FROM trials t JOIN experiment_trials et ON et.trial_id = t.id "
            f"JOIN experiments e ON e.id = et.experiment_id WHERE e.name = :experiment {where}")
