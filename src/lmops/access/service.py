"""The access capability of one app: store, key cache, counters, guard, bootstrap."""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timezone
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.access.admin import AdminService
from lmops.access.counters import Counters, MemoryCounters, RedisCounters
from lmops.access.guard import AccessGuard
from lmops.access.keys import KeyHasher, key_format_problem, weak_key_problem
from lmops.access.plan import budget_keys, budget_ttl
from lmops.access.rules import SCOPES
from lmops.access.secret import load_secret
from lmops.access.store import AccessStore, Conflict, KeyGrant
from lmops.config import Settings
from lmops.ttl_cache import TtlCache
from lmops.usage.pricing import PriceBook

log = logging.getLogger("lmops.access")

BOOTSTRAP_TEAM = "default"  # the team that OpenGuard also uses, so data made before access control stays reachable


def admin_key_problem(settings: Settings) -> str | None:
    """What is wrong with the admin key given in the environment (``$LMOPS_ADMIN_KEY``), if anything: not an
    lmops key, or one too easy to guess (it holds every right)."""
    env = settings.access.admin_key_env
    given = os.environ.get(env)
    if not given:
        return None
    problem = key_format_problem(given)
    if problem:
        return f"${env} is not a valid lmops key: {problem}"
    weak = weak_key_problem(given)
    if weak:
        return (f"${env} is too weak for an admin key: {weak}. Make one with: python3 -c \"import secrets; "
                "print('lmops-' + secrets.token_hex(4) + '-' + secrets.token_urlsafe(32))\"")
    return None


class AccessService:
    def __init__(self, settings: Settings, db: AsyncEngine, *, counters: Counters | None = None):
        cfg = settings.access
        self.settings = settings
        self.store = AccessStore(db)
        self.counters = counters or (RedisCounters(settings.redis_url) if settings.redis_url else MemoryCounters())
        self.cache = TtlCache[KeyGrant](self._load_grant, cfg.key_cache_ttl)
        self.team_grants = TtlCache[KeyGrant](self._load_team_grant, cfg.key_cache_ttl)  # batch work: team rules only
        self.prices = PriceBook(cfg.prices)
        self.guard = AccessGuard(self.cache, self.counters, self.prices,
                                 {m.name: m for m in settings.models}, cfg.redis_prefix,
                                 team_grants=self.team_grants,
                                 headers_on_success=cfg.rate_limit_headers == "always")
        self.admin: AdminService | None = None  # ready after start
        self.secret: bytes | None = None  # the server secret, loaded at start (other capabilities sign with it)

    async def start(self, *, bootstrap: bool | None = None, announce: TextIO | None = None) -> None:
        serving = self.settings.access.bootstrap if bootstrap is None else bootstrap
        self.secret = await load_secret(self.settings, self.store)
        hasher = KeyHasher(self.secret)
        self.guard.hasher = hasher
        self.admin = AdminService(self.store, hasher, self.cache)
        if serving:
            self._warn_unpriced()
            await self.bootstrap(announce or sys.stderr)

    def _warn_unpriced(self) -> None:
        """Prices set for some models but not all: the others cost $0, which dollar budgets never see."""
        prices = self.settings.access.prices
        unpriced = [m.name for m in self.settings.models if prices and m.name not in prices]
        if unpriced:
            log.warning("access.prices has no price for %s: their requests cost $0 in the ledger, and budgets in "
                        "dollars never count them", ", ".join(unpriced))

    async def stop(self) -> None:
        await self.counters.close()

    async def bootstrap(self, out: TextIO) -> None:
        """On a database without keys: the admin user, the default team and an admin key, printed once."""
        if not await self.store.is_empty():
            return
        assert self.admin is not None
        given = os.environ.get(self.settings.access.admin_key_env)
        problem = admin_key_problem(self.settings)
        if problem:  # before anything is written: a database with a team but no key would never bootstrap again
            raise ValueError(problem)
        try:
            team = await self.store.create_team(BOOTSTRAP_TEAM, team_id=BOOTSTRAP_TEAM)
            user = await self.store.create_user("admin", team["id"], "admin")
        except Conflict:
            return  # another replica is bootstrapping
        key, text = await self.admin.issue_key(None, team["id"], user_id=user["id"], name="bootstrap admin",
                                               scopes=frozenset(SCOPES), text=given)
        if given:
            out.write(f"lmops: the admin key from ${self.settings.access.admin_key_env} is registered "
                      f"(prefix {key['prefix']}).\n")
        else:
            # Printed, never logged: this is the only time the key is shown.
            out.write(f"lmops: created the admin API key (shown only once, store it now):\n  {text}\n")
        out.flush()

    async def _load_grant(self, prefix: str) -> KeyGrant | None:
        """The key cache's loader: the grant, and budget counters seeded from the ledger when missing."""
        grant = await self.store.grant(prefix)
        if grant is not None:
            await self._seed_budgets(grant)
        return grant

    async def _load_team_grant(self, team_id: str) -> KeyGrant | None:
        """A grant holding only a team's rules, for work done on the team's behalf without a key (batch)."""
        limits = await self.store.limits("team", team_id)
        if limits is None:
            return None
        grant = KeyGrant(key_id="", hash="", team_id=team_id, user_id=None, role="member", scopes=frozenset(),
                         expires_at=None, revoked=False, team_limits=limits, key_limits=None)
        await self._seed_budgets(grant)
        return grant

    async def _seed_budgets(self, grant: KeyGrant) -> None:
        now = datetime.now(timezone.utc)
        for subject_type, subject_id, limits in (("team", grant.team_id, grant.team_limits),
                                                 ("key", grant.key_id, grant.key_limits)):
            if limits is None or not limits.has_budget:
                continue
            keys = budget_keys(self.guard.namespace, subject_type, subject_id, limits, now)
            missing = [(k, unit) for k, unit in keys if not await self.counters.exists(k)]
            if missing:
                usd, tokens = await self.store.spent(subject_type, subject_id, limits.budget_period, now)
                ttl = budget_ttl(limits.budget_period, now)
                for key, unit in missing:
                    await self.counters.seed(key, usd if unit == "usd" else float(tokens), ttl)
