"""Usage reports from the ledger: totals by team, user, key, model and/or day, computed with GROUP BY in SQL.

A report groups by one dimension or several (``team,model``, ``team,day``...). Teams, users and keys are
grouped by id and shown with their names, looked up after the aggregation (one join per named dimension on
the grouped rows, not on the ledger). Exported as CSV, XLSX (openpyxl) and a PNG chart of usage per day
(matplotlib).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, func, null, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from lmops.access.tables import ApiKey, Team, User
from lmops.usage.records import RequestRecord as Ledger  # the billed rows are the ledger

DIMENSIONS = ("team", "user", "key", "model", "day")
_COLUMN = {"team": Ledger.team_id, "user": Ledger.user_id, "key": Ledger.key_id, "model": Ledger.model,
           "day": Ledger.day}
NAMED = ("team", "user", "key")  # grouped by id, shown by name
_SUMS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


def parse_dimensions(by: str | Sequence[str]) -> tuple[str, ...]:
    """``"team,model"`` (or a sequence of names) as dimensions, in order; ValueError with a readable message."""
    parts = [p.strip().lower() for p in (by.split(",") if isinstance(by, str) else by)]
    parts = [p for p in parts if p]
    wanted = f"one or more of {', '.join(DIMENSIONS)}, comma-separated (e.g. team,model)"
    if not parts:
        raise ValueError(f"group by {wanted}")
    unknown = [p for p in parts if p not in DIMENSIONS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(repr(u) for u in unknown)}: group by {wanted}")
    if len(set(parts)) != len(parts):
        raise ValueError(f"each dimension may appear once in {','.join(parts)!r}")
    return tuple(parts)


@dataclass(frozen=True)
class UsageRow:
    """Usage of one group: its value in each dimension (an id, a model, an ISO day; None where the ledger has
    none, such as a key without a user) and, for teams, users and keys, a readable name."""

    keys: tuple[str | None, ...]
    names: tuple[str | None, ...]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def label(self, i: int) -> str:
        return self.names[i] or self.keys[i] or "-"

    def sums(self) -> dict[str, Any]:
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": self.cost_usd}


@dataclass(frozen=True)
class UsageReport:
    by: tuple[str, ...]
    since: datetime | None
    until: datetime | None
    team_id: str | None
    rows: list[UsageRow]

    @property
    def totals(self) -> UsageRow:
        blank: tuple[str | None, ...] = (None,) * len(self.by)
        return UsageRow(blank, blank, sum(r.requests for r in self.rows), sum(r.prompt_tokens for r in self.rows),
                        sum(r.completion_tokens for r in self.rows), sum(r.cost_usd for r in self.rows))

    def as_dict(self) -> dict[str, Any]:
        """The admin API's answer: each row names its group by dimension (``team`` and ``team_name``...)."""
        rows = []
        for r in self.rows:
            row: dict[str, Any] = {}
            for i, dim in enumerate(self.by):
                row[dim] = r.keys[i]
                if dim in NAMED:
                    row[f"{dim}_name"] = r.names[i]
            rows.append({**row, **r.sums()})
        return {"by": list(self.by), "since": self.since, "until": self.until, "team_id": self.team_id,
                "rows": rows, "totals": self.totals.sums()}


def _filtered(query: Select[Any], since: datetime | None, until: datetime | None,
              team_id: str | None) -> Select[Any]:
    query = query.where(Ledger.team_id.is_not(None))  # billed requests only
    if since is not None:
        query = query.where(Ledger.created_at >= _utc(since))
    if until is not None:
        query = query.where(Ledger.created_at < _utc(until))
    if team_id is not None:
        query = query.where(Ledger.team_id == team_id)
    return query


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, date) else str(value)


def _name_of(dim: str, ident: ColumnElement[Any]) -> tuple[Any, ColumnElement[bool], Any]:
    """(table to join, join condition, readable name) of a named dimension; a key is named by its label, else
    its visible prefix."""
    if dim == "team":
        team = aliased(Team)
        return team, team.id == ident, team.name
    if dim == "user":
        user = aliased(User)
        return user, user.id == ident, user.name
    key = aliased(ApiKey)
    return key, key.id == ident, func.coalesce(key.name, key.prefix)


async def usage_report(db: AsyncEngine, by: str | Sequence[str], *, since: datetime | None = None,
                       until: datetime | None = None, team_id: str | None = None) -> UsageReport:
    dims = parse_dimensions(by)
    groups = [_COLUMN[d].label(f"g{i}") for i, d in enumerate(dims)]
    sums = [func.count().label("requests"), func.coalesce(func.sum(Ledger.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(Ledger.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(Ledger.cost_usd), 0.0).label("cost_usd")]
    grouped = _filtered(select(*groups, *sums), since, until, team_id).group_by(*groups).subquery()
    source: Any = grouped
    names: list[ColumnElement[Any]] = []  # one per dimension: a name, or NULL for models and days
    for i, dim in enumerate(dims):
        if dim in NAMED:
            table, on, name = _name_of(dim, grouped.c[f"g{i}"])
            source = source.outerjoin(table, on)
            names.append(name)
        else:
            names.append(null())
    keys = [grouped.c[f"g{i}"] for i in range(len(dims))]
    query = select(*keys, *names, *(grouped.c[s] for s in _SUMS)).select_from(source).order_by(*keys)
    async with db.connect() as conn:
        result = (await conn.execute(query)).tuples().all()
    n = len(dims)
    text = _text if "day" in dims else None  # days come back as dates; every other key is already a string
    rows = [UsageRow(tuple(map(text, r[:n])) if text else r[:n], r[n:2 * n], int(r[-4]), int(r[-3]), int(r[-2]),
                     float(r[-1])) for r in result]
    return UsageReport(dims, since, until, team_id, rows)


async def usage_over_time(db: AsyncEngine, by: str | Sequence[str], *, since: datetime | None = None,
                          until: datetime | None = None, team_id: str | None = None) -> UsageReport:
    """The chart's data: the report grouped by day first, then by the other dimensions asked for."""
    dims = parse_dimensions(by)
    return await usage_report(db, ("day", *(d for d in dims if d != "day")), since=since, until=until,
                              team_id=team_id)


# -- exports ---------------------------------------------------------------------------------
def table(report: UsageReport) -> list[list[Any]]:
    """Header and rows, the totals last: each dimension a column (named ones followed by ``<dim>_name``)."""
    header: list[Any] = []
    for dim in report.by:
        header += [dim, f"{dim}_name"] if dim in NAMED else [dim]
    header += list(_SUMS)
    body = []
    for r in [*report.rows, report.totals]:
        cells: list[Any] = []
        for i, dim in enumerate(report.by):
            cells += [r.keys[i], r.names[i]] if dim in NAMED else [r.keys[i]]
        body.append([*cells, *r.sums().values()])
    body[-1][0] = "total"
    return [header, *body]


def write_csv(report: UsageReport, path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(table(report))


def write_xlsx(report: UsageReport, path: str | Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.worksheets[0]  # a new workbook holds one sheet
    ws.title = f"usage by {', '.join(report.by)}"[:31]  # Excel's limit on a sheet's name
    rows = table(report)
    for row in rows:
        ws.append(row)
    for line in ws.iter_rows():
        for cell in line:
            if cell.data_type == "f":  # openpyxl takes any text starting with "=" (a team's name) for a formula
                cell.data_type = "s"
    for cell in (*ws[1], *ws[ws.max_row]):
        cell.font = Font(bold=True)
    cost = len(rows[0])  # the last column
    for column in ws.iter_cols(min_col=cost, max_col=cost, min_row=2):
        for cell in column:
            cell.number_format = "$#,##0.000000"
    ws.freeze_panes = "A2"
    wb.save(path)


def write_png(series: UsageReport, path: str | Path, *, top: int = 8) -> None:
    """Stacked bars of cost per day (tokens when nothing is priced), one colour per group: the ``top`` largest,
    the rest summed as "other". ``series`` is ``usage_over_time``'s report (day first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priced = any(r.cost_usd for r in series.rows)

    def measure(r: UsageRow) -> float:
        return r.cost_usd if priced else float(r.tokens)

    def group(r: UsageRow) -> str:
        return " / ".join(r.label(i) for i in range(1, len(series.by))) or "total"

    totals: dict[str, float] = {}
    for r in series.rows:
        totals[group(r)] = totals.get(group(r), 0.0) + measure(r)
    keep = sorted(totals, key=totals.__getitem__, reverse=True)[:top]
    days = sorted({r.keys[0] or "-" for r in series.rows})
    stacks: dict[str, dict[str, float]] = {name: {} for name in [*keep, "other"]}
    for r in series.rows:
        name = group(r) if group(r) in keep else "other"
        day = r.keys[0] or "-"
        stacks[name][day] = stacks[name].get(day, 0.0) + measure(r)
    others = list(series.by[1:])
    legend = bool(others and series.rows)
    width = max(6.0, min(16.0, 2 + 0.35 * len(days))) + (2.5 if legend else 0.0)  # the legend sits on the right
    fig, ax = plt.subplots(figsize=(width, 4.5), dpi=100)
    positions = range(len(days))
    bottom = [0.0] * len(days)
    for name, values in stacks.items():
        if not values:
            continue
        heights = [values.get(d, 0.0) for d in days]
        ax.bar(positions, heights, bottom=bottom, label=name, width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    step = max(1, len(days) // 15)  # at most ~15 day labels
    ax.set_xticks(list(positions)[::step], days[::step], rotation=45, ha="right")
    ax.set_xlim(-0.6, len(days) - 0.4)
    ax.set_title(("Cost (USD)" if priced else "Tokens") + " per day" + (f" by {', '.join(others)}" if others else ""))
    ax.set_ylabel("USD" if priced else "tokens")
    ax.grid(axis="y", alpha=0.3)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
