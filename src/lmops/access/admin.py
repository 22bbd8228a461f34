"""Administration of teams, users, keys and limits, shared by the admin API and the CLI.

``actor`` is the principal asking (None: the local CLI, which may do everything). An admin
manages every team; a team admin manages its own team's users, keys and key limits; what
belongs to another team is reported as not found, never as forbidden.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lmops.access.keys import KeyHasher
from lmops.access.rules import ROLES, SCOPES, SUBJECT_TYPES, Limits
from lmops.access.store import AccessStore, Conflict, KeyGrant
from lmops.access.tables import ApiKey, Team, User
from lmops.protocol.errors import APIError, InvalidRequest, NotFound, PermissionDenied
from lmops.serving.context import Principal
from lmops.ttl_cache import TtlCache

Row = dict[str, Any]


class AlreadyExists(APIError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "already_exists"


def is_admin(actor: Principal | None) -> bool:
    return actor is None or actor.role == "admin"


def require_manager(actor: Principal | None) -> None:
    """Admin routes: the admin scope, and the role of an admin or team admin."""
    if actor is not None and (not actor.can("admin") or actor.role not in ("admin", "team_admin")):
        raise PermissionDenied("This route is for administrators.", code="admin_required")


class AdminService:
    def __init__(self, store: AccessStore, hasher: KeyHasher, cache: TtlCache[KeyGrant]):
        self.store = store
        self.hasher = hasher
        self.cache = cache

    # -- teams ---------------------------------------------------------------------------------
    async def create_team(self, actor: Principal | None, name: str) -> Row:
        if not is_admin(actor):
            raise PermissionDenied("Only administrators create teams.", code="admin_required")
        return await self._unique(self.store.create_team(name))

    async def list_teams(self, actor: Principal | None) -> list[Row]:
        return await self.store.rows(Team, None if is_admin(actor) else actor.team_id)  # type: ignore[union-attr]

    async def team(self, actor: Principal | None, ident: str) -> Row:
        """A visible team by id or name."""
        return self._visible(actor, await self.store.find(Team, ident), "team", ident, "id")

    # -- users ---------------------------------------------------------------------------------
    async def create_user(self, actor: Principal | None, name: str, team: str, role: str = "member") -> Row:
        if role not in ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")
        if role == "admin" and not is_admin(actor):
            raise PermissionDenied("Only administrators create administrators.", code="admin_required")
        team_row = await self.team(actor, team)
        return await self._unique(self.store.create_user(name, team_row["id"], role))

    async def list_users(self, actor: Principal | None, team: str | None = None) -> list[Row]:
        return await self.store.rows(User, await self._team_filter(actor, team))

    # -- keys ----------------------------------------------------------------------------------
    async def issue_key(self, actor: Principal | None, team: str, *, user_id: str | None = None,
                        name: str | None = None, scopes: frozenset[str] = frozenset({"inference", "batch"}),
                        expires_at: datetime | None = None, text: str | None = None) -> tuple[Row, str]:
        """A new key of a team (and user): its row and its text, which is shown this once only."""
        unknown = scopes - set(SCOPES)
        if unknown or not scopes:
            raise InvalidRequest(f"scopes must be a non-empty subset of {', '.join(SCOPES)}", param="scopes")
        team_row = await self.team(actor, team)
        if user_id is not None:
            user = self._visible(actor, await self.store.find(User, user_id), "user", user_id)
            if user["team_id"] != team_row["id"]:
                raise InvalidRequest("The user belongs to another team.", param="user")
            if user["role"] == "admin" and not is_admin(actor):
                raise PermissionDenied("Only administrators issue keys of administrators.", code="admin_required")
            user_id = user["id"]
        try:
            new = self.hasher.adopt(text) if text else self.hasher.new_key()
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        row = await self._unique(self.store.create_key(prefix=new.prefix, hash=new.hash, team_id=team_row["id"],
                                                       user_id=user_id, name=name, scopes=scopes,
                                                       expires_at=expires_at))
        row.pop("hash", None)
        return row, new.text

    async def list_keys(self, actor: Principal | None, team: str | None = None) -> list[Row]:
        return await self.store.rows(ApiKey, await self._team_filter(actor, team))

    async def revoke_key(self, actor: Principal | None, ident: str) -> Row:
        key = self._visible(actor, await self.store.find(ApiKey, ident), "key", ident)
        await self.store.revoke_key(key["id"])
        self.cache.invalidate(key["prefix"])
        return self._visible(actor, await self.store.find(ApiKey, key["id"]), "key", ident)

    # -- limits --------------------------------------------------------------------------------
    async def set_limits(self, actor: Principal | None, subject_type: str, ident: str, limits: Limits) -> Row:
        subject = await self._subject(actor, subject_type, ident)
        if subject_type == "team" and not is_admin(actor):
            raise PermissionDenied("Only administrators set team limits.", code="admin_required")
        await self.store.set_limits(subject_type, subject["id"], limits)
        self.cache.invalidate()
        return await self.get_limits(actor, subject_type, subject["id"])

    async def get_limits(self, actor: Principal | None, subject_type: str, ident: str) -> Row:
        subject = await self._subject(actor, subject_type, ident)
        limits = await self.store.limits(subject_type, subject["id"])
        return {"subject_type": subject_type, "subject_id": subject["id"],
                **(limits_dict(limits) if limits else {})}

    # -- helpers -------------------------------------------------------------------------------
    async def visible_team_id(self, actor: Principal | None, team: str | None) -> str | None:
        """For reports: the team asked for (must be visible), else None for admins and the actor's own team."""
        return await self._team_filter(actor, team)

    async def _team_filter(self, actor: Principal | None, team: str | None) -> str | None:
        if team is not None:
            return (await self.team(actor, team))["id"]
        return None if is_admin(actor) else actor.team_id  # type: ignore[union-attr]

    async def _subject(self, actor: Principal | None, subject_type: str, ident: str) -> Row:
        if subject_type not in SUBJECT_TYPES:
            raise InvalidRequest(f"limits are set on a {' or a '.join(SUBJECT_TYPES)}", param="subject_type")
        if subject_type == "team":
            return await self.team(actor, ident)
        return self._visible(actor, await self.store.find(ApiKey, ident), "key", ident)

    @staticmethod
    def _visible(actor: Principal | None, row: Row | None, kind: str, ident: str, team_field: str = "team_id") -> Row:
        if row is None or not (is_admin(actor) or row[team_field] == actor.team_id):  # type: ignore[union-attr]
            raise NotFound(f"No {kind} '{ident}'.")
        return row

    @staticmethod
    async def _unique(creating: Any) -> Row:
        try:
            return await creating
        except Conflict as exc:
            raise AlreadyExists(str(exc)) from None


def limits_dict(limits: Limits) -> Row:
    return {"models": list(limits.models) if limits.models is not None else None, "rpm": limits.rpm,
            "tpm": limits.tpm, "max_parallel": limits.max_parallel, "budget_tokens": limits.budget_tokens,
            "budget_usd": limits.budget_usd, "budget_period": limits.budget_period}
