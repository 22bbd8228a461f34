"""Database side of sign-in: users (read from access control's table), web passwords and sessions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.access.tables import User
from lmops.chat.tables import Credential, Session


@dataclass(frozen=True)
class Account:
    user_id: str
    name: str
    team_id: str
    role: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class Accounts:
    def __init__(self, db: AsyncEngine):
        self.db = db

    async def user(self, ident: str) -> Account | None:
        """A user of access control by id or name."""
        users = User.__table__
        async with self.db.connect() as conn:
            row = (await conn.execute(select(users.c.id, users.c.name, users.c.team_id, users.c.role)
                                      .where(or_(users.c.id == ident, users.c.name == ident)).limit(1))).first()
        return Account(row.id, row.name, row.team_id, row.role) if row else None

    async def password_hash(self, user_id: str) -> str | None:
        async with self.db.connect() as conn:
            return await conn.scalar(select(Credential.password_hash).where(Credential.user_id == user_id))

    async def set_password_hash(self, user_id: str, hashed: str) -> None:
        """Set (or replace) a user's password; the user's sessions end."""
        now = datetime.now(timezone.utc)
        async with self.db.begin() as conn:
            changed = await conn.execute(update(Credential).where(Credential.user_id == user_id)
                                         .values(password_hash=hashed, updated_at=now))
            if not changed.rowcount:
                await conn.execute(insert(Credential).values(user_id=user_id, password_hash=hashed, updated_at=now))
            await conn.execute(delete(Session).where(Session.user_id == user_id))

    async def open_session(self, token: str, user_id: str, csrf: str, expires_at: datetime) -> None:
        now = datetime.now(timezone.utc)
        async with self.db.begin() as conn:
            await conn.execute(delete(Session).where(Session.expires_at < now))  # sweep the expired ones
            await conn.execute(insert(Session).values(token_hash=token_hash(token), user_id=user_id, csrf_token=csrf,
                                                      created_at=now, expires_at=expires_at))

    async def session(self, hashed: str) -> tuple[str, str, datetime] | None:
        """(user id, CSRF token, expiry) of a live session, found by its token's hash (``token_hash``)."""
        async with self.db.connect() as conn:
            row = (await conn.execute(select(Session.user_id, Session.csrf_token, Session.expires_at)
                                      .where(Session.token_hash == hashed))).first()
        if row is None or utc(row.expires_at) <= datetime.now(timezone.utc):
            return None
        return row.user_id, row.csrf_token, utc(row.expires_at)

    async def close_session(self, token: str) -> None:
        async with self.db.begin() as conn:
            await conn.execute(delete(Session).where(Session.token_hash == token_hash(token)))
