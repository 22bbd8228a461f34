"""Usage reports from the ledger: totals by team, user, key, model or day, computed with GROUP BY in SQL.

Exported as CSV, XLSX (openpyxl) and a PNG chart of usage over time (matplotlib).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.usage.records import RequestRecord as Ledger  # the billed rows are the ledger

GROUPINGS = ("team", "user", "key", "model", "day")


@dataclass(frozen=True)
class UsageRow:
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsageReport:
    by: str
    since: datetime | None
    until: datetime | None
    team_id: str | None
    rows: list[UsageRow]

    @property
    def totals(self) -> UsageRow:
        return UsageRow("total", sum(r.requests for r in self.rows), sum(r.prompt_tokens for r in self.rows),
                        sum(r.completion_tokens for r in self.rows), sum(r.cost_usd for r in self.rows))

    def as_dict(self) -> dict[str, Any]:
        return {"by": self.by, "since": self.since, "until": self.until, "team_id": self.team_id,
                "rows": [asdict(r) for r in self.rows], "totals": asdict(self.totals)}


def _group(by: str) -> ColumnElement[Any]:
    if by not in GROUPINGS:
        raise ValueError(f"group by one of {', '.join(GROUPINGS)}, not {by!r}")
    columns = {"team": Ledger.team_id, "user": Ledger.user_id, "key": Ledger.key_id,
               "model": Ledger.model, "day": Ledger.day}
    return columns[by]


def _filtered(query: Any, since: datetime | None, until: datetime | None, team_id: str | None) -> Any:
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


def _label(value: Any) -> str:
    if value is None:
        return "-"
    return value.isoformat() if isinstance(value, date) else str(value)


_SUMS = (func.count(), func.coalesce(func.sum(Ledger.prompt_tokens), 0),
         func.coalesce(func.sum(Ledger.completion_tokens), 0), func.coalesce(func.sum(Ledger.cost_usd), 0.0))


async def usage_report(db: AsyncEngine, by: str, *, since: datetime | None = None, until: datetime | None = None,
                       team_id: str | None = None) -> UsageReport:
    group = _group(by).label("grp")
    query = _filtered(select(group, *_SUMS), since, until, team_id).group_by(group).order_by(group)
    async with db.connect() as conn:
        result = (await conn.execute(query)).all()
    rows = [UsageRow(_label(g), int(n), int(p), int(c), float(cost)) for g, n, p, c, cost in result]
    return UsageReport(by, since, until, team_id, rows)


async def usage_over_time(db: AsyncEngine, by: str, *, since: datetime | None = None, until: datetime | None = None,
                          team_id: str | None = None) -> list[tuple[str, str, UsageRow]]:
    """(day, group, usage) per day and group: the data of the chart."""
    day = Ledger.day.label("day")
    group = _group(by).label("grp")
    query = _filtered(select(day, group, *_SUMS), since, until, team_id).group_by(day, group).order_by(day)
    async with db.connect() as conn:
        result = (await conn.execute(query)).all()
    return [(_label(d), _label(g), UsageRow(_label(g), int(n), int(p), int(c), float(cost)))
            for d, g, n, p, c, cost in result]


# -- exports ---------------------------------------------------------------------------------
_COLUMNS = [f.name for f in fields(UsageRow)]


def _table(report: UsageReport) -> list[list[Any]]:
    header = [report.by if c == "group" else c for c in _COLUMNS]
    body = [[getattr(r, c) for c in _COLUMNS] for r in [*report.rows, report.totals]]
    return [header, *body]


def write_csv(report: UsageReport, path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(_table(report))


def write_xlsx(report: UsageReport, path: str | Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = f"usage by {report.by}"
    for row in _table(report):
        ws.append(row)
    for cell in (*ws[1], *ws[ws.max_row]):
        cell.font = Font(bold=True)
    for column in ws.iter_cols(min_col=5, max_col=5, min_row=2):
        for cell in column:
            cell.number_format = "$#,##0.000000"
    wb.save(path)


def write_png(series: list[tuple[str, str, UsageRow]], by: str, path: str | Path, *, top: int = 8) -> None:
    """Cost per day (tokens when nothing is priced), one line per group: the ``top`` largest, the rest summed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priced = any(u.cost_usd for _, _, u in series)

    def measure(u: UsageRow) -> float:
        return u.cost_usd if priced else float(u.tokens)

    totals: dict[str, float] = {}
    for _, group, u in series:
        totals[group] = totals.get(group, 0.0) + measure(u)
    keep = set(sorted(totals, key=totals.__getitem__, reverse=True)[:top])
    days = sorted({d for d, _, _ in series})
    lines: dict[str, dict[str, float]] = {}
    for day, group, u in series:
        name = "total" if by == "day" else group if group in keep else "other"
        lines.setdefault(name, {}).setdefault(day, 0.0)
        lines[name][day] += measure(u)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    x = [datetime.fromisoformat(d) for d in days]
    for name, values in sorted(lines.items()):
        ax.plot(x, [values.get(d, 0.0) for d in days], marker="o", label=name)
    ax.set_title(f"Usage per day by {by}")
    ax.set_ylabel("cost (USD)" if priced else "tokens")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(loc="upper left", fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
