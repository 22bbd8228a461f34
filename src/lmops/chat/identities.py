"""Users of single sign-on: the provider's (issuer, subject) names an access-control user for good (table
``chat_identities``); the first sign-in creates the user, every sign-in puts it in the team its claim names.

A user is never found by name: an SSO user whose name is taken by another user (a local password user, say)
gets a new user with a suffixed name, never the other's account.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.access.tables import Team, User
from lmops.chat.accounts import Account
from lmops.chat.oidc import OidcError
from lmops.chat.tables import Identity
from lmops.config import SsoConfig
from lmops.ids import new_id

NAME_LENGTH = 200
ATTEMPTS = 20  # names tried (alice, alice-2, ...) before giving up
_SPACE = re.compile(r"\s+")


def _values(claim: Any) -> list[str]:
    """A claim as a list of strings (a string, or a list of them; other values are ignored)."""
    if isinstance(claim, str):
        return [claim]
    if isinstance(claim, list):
        return [v for v in claim if isinstance(v, str)]
    return []


def base_name(claims: dict[str, Any], username_claim: str) -> str:
    """The name a new user gets: the configured claim, else email, else the subject."""
    for claim in (username_claim, "email", "sub"):
        value = claims.get(claim)
        if isinstance(value, str) and (name := _SPACE.sub(" ", value).strip()):
            return name[:NAME_LENGTH - 4]  # room for a suffix
    return "sso-user"


class Identities:
    def __init__(self, db: AsyncEngine, config: SsoConfig):
        self.db = db
        self.config = config

    async def team_id(self, claims: dict[str, Any]) -> str:
        """The team the claims name (through ``team_map`` when set), else the default team; OidcError without."""
        names = _values(claims.get(self.config.team_claim))
        if self.config.team_map:
            names = [self.config.team_map[n] for n in names if n in self.config.team_map]
        if self.config.default_team is not None:
            names.append(self.config.default_team)
        if names:
            async with self.db.connect() as conn:
                rows = (await conn.execute(select(Team.id, Team.name)
                                           .where(or_(Team.id.in_(names), Team.name.in_(names))))).all()
            for wanted in names:  # in the claim's order, the default last
                team = next((r.id for r in rows if wanted in (r.id, r.name)), None)
                if team is not None:
                    return team
        raise OidcError("no_team", f"claim {self.config.team_claim!r} ({claims.get(self.config.team_claim)!r}) "
                                   "names no team and no existing default_team is configured")

    async def user(self, issuer: str, claims: dict[str, Any]) -> Account:
        """The user of these (checked) ID token claims, created on the first sign-in, moved to the claimed team."""
        team_id = await self.team_id(claims)
        subject = claims["sub"]
        for attempt in range(ATTEMPTS):
            account = await self._known(issuer, subject, team_id)
            if account is not None:
                return account
            name = base_name(claims, self.config.username_claim)
            if attempt:
                name = f"{name}-{attempt + 1}"
            created = await self._create(issuer, subject, name, team_id)
            if created is not None:
                return created
        raise OidcError("no_user", f"no free user name for {base_name(claims, self.config.username_claim)!r}")

    async def _known(self, issuer: str, subject: str, team_id: str) -> Account | None:
        """The identity's user, moved to ``team_id`` if elsewhere; None when unknown (an identity whose user was
        deleted is forgotten)."""
        async with self.db.begin() as conn:
            user_id = await conn.scalar(select(Identity.user_id).where(Identity.issuer == issuer,
                                                                        Identity.subject == subject))
            if user_id is None:
                return None
            row = (await conn.execute(select(User.id, User.name, User.team_id, User.role)
                                      .where(User.id == user_id))).first()
            if row is None:
                await conn.execute(delete(Identity).where(Identity.issuer == issuer, Identity.subject == subject))
                return None
            if row.team_id != team_id:
                await conn.execute(update(User).where(User.id == row.id).values(team_id=team_id))
            return Account(row.id, row.name, team_id, row.role)

    async def _create(self, issuer: str, subject: str, name: str, team_id: str) -> Account | None:
        """A new member with its identity, in one transaction; None when the name (or, in a race, the identity)
        is taken."""
        now = datetime.now(timezone.utc)
        user_id = new_id("user_")
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(User).values(id=user_id, team_id=team_id, name=name, role="member",
                                                       created_at=now))
                await conn.execute(insert(Identity).values(issuer=issuer, subject=subject, user_id=user_id,
                                                           created_at=now))
        except IntegrityError:
            return None
        return Account(user_id, name, team_id, "member")
