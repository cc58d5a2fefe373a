"""`--where` for reports and plots: conditions on the trials' key columns, always as bound parameters.

Every report and plot selects an experiment's trials through `e.name = :experiment` (frames.py
experiment_trials_sql and the reports' own SQL, all with the trials aliased `t`); a filtered database
narrows exactly that clause. The allowed columns are db/models.py KEY_COLUMNS; a value is never spliced
into SQL text.

    --where arch=resnet50            one value
    --where dataset=cifar10,svhn     any of several
    --where blocks!=0                not this value (NULL rows are kept out too, as in SQL)
    --where subset_size=full         NULL: the full training split (subset_size); 'null' on any column
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from db.models import KEY_COLUMNS
from orchestrator.errors import UserError
from orchestrator.results.query import ReadOnlyDatabase

INTEGER_COLUMNS = ("blocks", "subset_size", "seed", "epochs")  # the INTEGER/BIGINT key columns
NULL_WORDS = ("null", "full")
SCOPE = "e.name = :experiment"
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(!=|=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    column: str
    negated: bool
    values: tuple[Any, ...]  # None = NULL

    def sql(self, index: int) -> tuple[str, dict[str, Any]]:
        column = f"t.{self.column}"
        concrete = [v for v in self.values if v is not None]
        params = {f"where_{index}_{i}": v for i, v in enumerate(concrete)}
        parts = []
        if concrete:
            names = ", ".join(f":{name}" for name in params)
            parts.append(f"{column} {'NOT IN' if self.negated else 'IN'} ({names})")
        if None in self.values:
            parts.append(f"{column} IS {'NOT ' if self.negated else ''}NULL")
        joiner = " AND " if self.negated else " OR "
        return "(" + joiner.join(parts) + ")", params


def _value(column: str, text: str) -> Any:
    if text.lower() in NULL_WORDS:
        if text.lower() == "full" and column != "subset_size":
            raise UserError(f"--where {column}=full: 'full' means the whole training split (subset_size only); "
                            "use null")
        return None
    if column in INTEGER_COLUMNS:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"--where {column}: {text!r} is not an integer") from None
    return text


def parse_where(expressions: Sequence[str]) -> list[Condition]:
    conditions = []
    for expression in expressions:
        match = _CONDITION.match(expression)
        if match is None:
            raise UserError(f"--where {expression!r}: write COLUMN=VALUE[,VALUE…] or COLUMN!=VALUE "
                            f"(columns: {', '.join(KEY_COLUMNS)})")
        column, operator, raw = match.groups()
        if column not in KEY_COLUMNS:
            close = difflib.get_close_matches(column, KEY_COLUMNS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"--where: unknown column {column!r}{hint} (key columns: {', '.join(KEY_COLUMNS)})")
        values = tuple(_value(column, part.strip()) for part in raw.split(",") if part.strip())
        if not values:
            raise UserError(f"--where {expression!r}: no value")
        conditions.append(Condition(column, operator == "!=", values))
    return conditions


def where_sql(conditions: Sequence[Condition]) -> tuple[str, dict[str, Any]]:
    """` AND (…) AND (…)` and its parameters ('' when there are no conditions)."""
    text, params = "", {}
    for index, condition in enumerate(conditions):
        part, values = condition.sql(index)
        text += f" AND {part}"
        params.update(values)
    return text, params


class FilteredDatabase(ReadOnlyDatabase):
    """The same read-only connection, with every experiment-scoped query narrowed by the conditions."""

    def __init__(self, base: ReadOnlyDatabase, conditions: Sequence[Condition]) -> None:  # noqa: D107
        self.__dict__.update(base.__dict__)  # share the engine: nothing new is opened or closed
        self.conditions = list(conditions)
        self._where, self._params = where_sql(self.conditions)

    def close(self) -> None:
        """The base database owns the engine."""

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        if self._where and SCOPE in sql:
            sql = sql.replace(SCOPE, f"{SCOPE}{self._where}")
            params = {**(params or {}), **self._params}
        return super().rows(sql, params)


def describe(conditions: Sequence[Condition]) -> str:
    """The conditions as the user wrote them (a report's note)."""
    def value(v: Any) -> str:
        return "null" if v is None else str(v)

    return " and ".join(f"{c.column}{'!=' if c.negated else '='}{','.join(value(v) for v in c.values)}"
                        for c in conditions)
