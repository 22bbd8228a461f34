"""Database queries of the access capability (never on the request path except to fill the key cache)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.access.rules import Limits, period_start
from lmops.access.tables import ApiKey, LimitRule, ServerSecret, Team, User
from lmops.ids import new_id
from lmops.usage.records import RequestRecord

SECRET_NAME = "key_hashing"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class KeyGrant:
    """Everything the guard needs to know about one key, cached by its prefix."""

    key_id: str
    hash: str
    team_id: str
    user_id: str | None
    role: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked: bool
    team_limits: Limits | None
    key_limits: Limits | None


def limits_of(rule: Any) -> Limits:
    return Limits(
        models=tuple(rule.models) if rule.models is not None else None, rpm=rule.rpm, tpm=rule.tpm,
        max_parallel=rule.max_parallel, budget_tokens=rule.budget_tokens, budget_usd=rule.budget_usd,
        budget_period=rule.budget_period,
    )


class AccessStore:
    def __init__(self, db: AsyncEngine):
        self.db = db

    # -- the server secret of earlier versions (access/secret.py) ---------------------------------
    async def legacy_secret(self) -> bytes | None:
        """The key-hashing secret an earlier lmops generated into the database, if it is still there."""
        async with self.db.connect() as conn:
            value = await conn.scalar(select(ServerSecret.value).where(ServerSecret.name == SECRET_NAME))
        return bytes.fromhex(value) if value is not None else None

    async def forget_legacy_secret(self) -> None:
        async with self.db.begin() as conn:
            await conn.execute(delete(ServerSecret).where(ServerSecret.name == SECRET_NAME))

    # -- the key cache's one query -------------------------------------------------------------
    async def grant(self, prefix: str) -> KeyGrant | None:
        keys = ApiKey.__table__
        query = (select(keys, User.role.label("role")).outerjoin(User, User.id == keys.c.user_id)
                 .where(keys.c.prefix == prefix))
        async with self.db.connect() as conn:
            k = (await conn.execute(query)).mappings().first()
            if k is None:
                return None
            rules = (await conn.execute(select(LimitRule).where(
                ((LimitRule.subject_type == "team") & (LimitRule.subject_id == k["team_id"]))
                | ((LimitRule.subject_type == "key") & (LimitRule.subject_id == k["id"]))))).all()
        by_type = {r.subject_type: limits_of(r) for r in rules}
        return KeyGrant(
            key_id=k["id"], hash=k["hash"], team_id=k["team_id"], user_id=k["user_id"], role=k["role"] or "member",
            scopes=frozenset(s for s in k["scopes"].split(",") if s), expires_at=as_utc(k["expires_at"]),
            revoked=k["revoked_at"] is not None, team_limits=by_type.get("team"), key_limits=by_type.get("key"),
        )

    # -- spend already booked (budgets survive restarts) ------------------------------------------
    async def spent(self, subject_type: str, subject_id: str, period: str, now: datetime) -> tuple[float, int]:
        """Dollars and tokens booked in the ledger for a team or key in the period containing ``now``."""
        column = RequestRecord.team_id if subject_type == "team" else RequestRecord.key_id
        query = select(func.coalesce(func.sum(RequestRecord.cost_usd), 0.0),
                       func.coalesce(func.sum(RequestRecord.prompt_tokens + RequestRecord.completion_tokens), 0)
                       ).where(column == subject_id)
        start = period_start(period, now)
        if start is not None:
            query = query.where(RequestRecord.created_at >= start)
        async with self.db.connect() as conn:
            usd, tokens = (await conn.execute(query)).one()
        return float(usd or 0.0), int(tokens or 0)  # never None (coalesce); typed as if it could be

    # -- administration ------------------------------------------------------------------------
    async def is_empty(self) -> bool:
        async with self.db.connect() as conn:
            return not await conn.scalar(select(func.count()).select_from(ApiKey))

    async def create_team(self, name: str, team_id: str | None = None) -> dict[str, Any]:
        row = {"id": team_id or new_id("team_"), "name": name, "created_at": utcnow()}
        await self._insert(Team, row, f"a team named {name!r} already exists")
        return row

    async def create_user(self, name: str, team_id: str, role: str) -> dict[str, Any]:
        row = {"id": new_id("user_"), "team_id": team_id, "name": name, "role": role, "created_at": utcnow()}
        await self._insert(User, row, f"a user named {name!r} already exists")
        return row

    async def create_key(self, *, prefix: str, hash: str, team_id: str, user_id: str | None, name: str | None,
                         scopes: frozenset[str], expires_at: datetime | None) -> dict[str, Any]:
        row = {"id": new_id("key_"), "prefix": prefix, "hash": hash, "team_id": team_id, "user_id": user_id,
               "name": name, "scopes": ",".join(sorted(scopes)), "created_at": utcnow(),
               "expires_at": expires_at, "revoked_at": None}
        await self._insert(ApiKey, row, "a key with this prefix already exists")
        return row

    async def revoke_key(self, key_id: str) -> bool:
        async with self.db.begin() as conn:
            result = await conn.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                                        .values(revoked_at=utcnow()))
        return bool(result.rowcount)

    async def set_limits(self, subject_type: str, subject_id: str, limits: Limits) -> None:
        values = {"models": list(limits.models) if limits.models is not None else None, "rpm": limits.rpm,
                  "tpm": limits.tpm, "max_parallel": limits.max_parallel, "budget_tokens": limits.budget_tokens,
                  "budget_usd": limits.budget_usd, "budget_period": limits.budget_period, "updated_at": utcnow()}
        async with self.db.begin() as conn:
            done = await conn.execute(update(LimitRule).where(LimitRule.subject_type == subject_type,
                                                              LimitRule.subject_id == subject_id).values(**values))
            if not done.rowcount:
                await conn.execute(insert(LimitRule).values(subject_type=subject_type, subject_id=subject_id,
                                                            **values))

    async def limits(self, subject_type: str, subject_id: str) -> Limits | None:
        async with self.db.connect() as conn:
            rule = (await conn.execute(select(LimitRule).where(LimitRule.subject_type == subject_type,
                                                               LimitRule.subject_id == subject_id))).first()
        return limits_of(rule) if rule else None

    async def rows(self, table: Any, team_id: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """Rows of teams/users/api_keys, optionally of one team (key hashes are never returned)."""
        query = select(table)
        if team_id is not None:
            query = query.where((table.id if table is Team else table.team_id) == team_id)
        for column, value in where.items():
            query = query.where(getattr(table, column) == value)
        async with self.db.connect() as conn:
            result = (await conn.execute(query.order_by(table.created_at))).mappings().all()
        return [{k: as_utc(v) if isinstance(v, datetime) else v for k, v in r.items() if k != "hash"}
                for r in result]

    async def find(self, table: Any, ident: str) -> dict[str, Any] | None:
        """A team, user or key by id, or by name (teams, users) or prefix (keys)."""
        other = table.prefix if table is ApiKey else table.name
        async with self.db.connect() as conn:
            row = (await conn.execute(select(table).where((table.id == ident) | (other == ident)))).mappings().first()
        if row is None:
            return None
        return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items() if k != "hash"}

    async def _insert(self, table: Any, row: dict[str, Any], conflict: str) -> None:
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(table).values(**row))
        except IntegrityError:
            raise Conflict(conflict) from None


class Conflict(Exception):
    """A name or key that must be unique already exists."""

