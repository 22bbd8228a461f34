"""The access guard: API key → principal, model access, limits and budgets; prices what a request used."""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from lmops.access.counters import Admission, Counters, MemoryCounters
from lmops.access.keys import KEY_TAG, PREFIX_LENGTH, KeyHasher, bearer_token, key_prefix
from lmops.access.plan import Meter, Plan, Planner
from lmops.access.store import KeyGrant
from lmops.config import ModelConfig
from lmops.protocol.errors import AuthenticationError, LimitsUnavailable, PermissionDenied, RateLimited
from lmops.serving.context import Principal, RawHeaders, RequestContext
from lmops.ttl_cache import TtlCache
from lmops.usage.pricing import PriceBook

log = logging.getLogger("lmops.access")

_BAD_KEY = "Incorrect API key provided."
_HEAD = len(f"Bearer {KEY_TAG}-") + PREFIX_LENGTH  # "Bearer lmops-<prefix>": one key's headers share it


class _Verified:
    """What the guard derives once from a cached grant: who it is, when it expires, and the Authorization
    header that matched its hash (so a key's next requests cost a constant-time compare of that header and a
    cache lookup, instead of parsing it and computing an HMAC)."""

    __slots__ = ("allowed", "expires", "grant", "header", "prefix", "principal")

    def __init__(self, grant: KeyGrant, prefix: str, header: bytes):
        self.grant = grant
        self.prefix = prefix
        self.header = header
        self.expires = grant.expires_at.timestamp() if grant.expires_at is not None else math.inf
        self.principal = Principal(team_id=grant.team_id, user_id=grant.user_id, key_id=grant.key_id,
                                   role=grant.role, scopes=grant.scopes)
        self.allowed: dict[str, bool] = {}  # model name -> allowed by both team and key rules

    def allows(self, name: str) -> bool:
        hit = self.allowed.get(name)
        if hit is None:
            hit = _allows(self.grant, name)
            if len(self.allowed) < 1024:
                self.allowed[name] = hit
        return hit


def _allows(grant: KeyGrant, name: str) -> bool:
    return all(limits is None or limits.allows(name) for limits in (grant.team_limits, grant.key_limits))


class AccessGuard:
    """Implements the Guard protocol; no database round trip per request."""

    def __init__(self, cache: TtlCache[KeyGrant], counters: Counters, prices: PriceBook,
                 models: dict[str, ModelConfig], namespace: str, clock: Any = time.time,
                 team_grants: TtlCache[KeyGrant] | None = None, headers_on_success: bool = False):
        self.cache = cache
        self.team_grants = team_grants
        self.counters = counters
        self.prices = prices
        self.contexts = {name: model.context_length for name, model in models.items()}  # absent: unknown
        self.namespace = namespace
        self.hasher: KeyHasher | None = None  # set at start, once the server secret is known
        self.headers_on_success = headers_on_success  # x-ratelimit-* on every response, else on refusals only
        self._clock = clock
        self._planner = Planner(namespace)
        # The memory backend answers at once: calling it directly saves a coroutine per request.
        self._admit_now = counters.admit_now if isinstance(counters, MemoryCounters) else None
        # The head of an Authorization header (scheme and key prefix) -> the key last verified with it.
        self._verified: dict[bytes, _Verified] = {}

    # -- Guard protocol ------------------------------------------------------------------------
    async def authenticate(self, request: Request, scope: str) -> Principal:
        return (await self._identify(request, scope)).principal

    async def allowed_models(self, request: Request) -> Callable[[str], bool]:
        """The public names (``model`` or ``model:adapter``) the key may use: those both its team's and its
        own model rules allow, the rule ``_plan`` applies to each request."""
        return (await self._identify(request, "inference")).allows

    async def admit(self, request: Request, ctx: RequestContext) -> None:
        # _identify and the admission inlined, the clock read once: this runs for every request, and with the
        # memory counters nothing here needs to await unless the key is not cached yet
        authorization = _header(request, b"authorization")
        verified = self._known(authorization) or await self._verify(authorization)
        now = self._clock()  # after a key load, not before it
        self._usable(verified, "inference", now)
        ctx.principal = verified.principal
        plan = self._plan(verified.grant, ctx, ctx.body_bytes, now, verified)
        if plan is not None:
            admission = (self._admit_now(plan.checks, plan.amounts) if self._admit_now is not None
                         else await self._admission(plan))
            ctx.rate_headers = self._admitted(ctx, plan, admission)

    async def admit_work(self, ctx: RequestContext, body_bytes: int) -> None:
        """Admit a call made for ``ctx.principal``'s team without an HTTP request (batch work): the team's
        model rules, limits and budgets apply exactly as to its keys' requests."""
        if ctx.principal is None or self.team_grants is None:
            return
        grant = await self.team_grants.get(ctx.principal.team_id)
        if grant is not None:
            plan = self._plan(grant, ctx, body_bytes, self._clock())
            if plan is not None:
                self._admitted(ctx, plan, await self._admission(plan))

    def _plan(self, grant: KeyGrant, ctx: RequestContext, body_bytes: int, now: float,
              verified: _Verified | None = None) -> Plan | None:
        """Model rules (refused here), then the limit and budget checks the request must pass, reserving its
        worst case; None when it has no limits."""
        model = ctx.model or ""
        adapter = ctx.extra.get("adapter")
        name = f"{model}:{adapter}" if adapter else model
        if not (verified.allows(name) if verified is not None else _allows(grant, name)):
            raise PermissionDenied(f"This API key is not allowed to use the model '{name}'.", param="model",
                                   code="model_not_allowed")
        if grant.team_limits is None and grant.key_limits is None:
            return None
        max_tokens, max_cost = self._worst_case(body_bytes, ctx)
        plan = self._planner.plan(grant, max_cost, max_tokens, now)
        return plan if plan.checks else None

    async def _admission(self, plan: Plan) -> Admission:
        try:
            return await self.counters.admit(plan.checks, plan.amounts)
        except Exception as exc:  # noqa: BLE001 - fail closed: no limit or budget can be checked
            log.error("limit counters unavailable: %s", type(exc).__name__)
            raise LimitsUnavailable() from None

    def _admitted(self, ctx: RequestContext, plan: Plan, admission: Admission) -> RawHeaders | None:
        """Refuse, or hold the reservation until the request settles; the rate-limit headers to answer with."""
        if not admission.ok:
            raise _refusal(plan, admission.failed, plan.headers(admission.values))
        ctx.reservation = plan
        return plan.headers(admission.values) if self.headers_on_success else None

    def settle(self, ctx: RequestContext) -> float | None:
        """Release what admission reserved and book the real usage; the cost that the request's record bills."""
        if ctx.principal is None:
            return None  # never authenticated: nothing to bill (batch work carries its job's team, without a key)
        cost = self.prices.cost(ctx.model, ctx.prompt_tokens, ctx.completion_tokens, ctx.images)
        if ctx.reservation is not None:
            tokens = ctx.prompt_tokens + ctx.completion_tokens
            self.counters.apply(*ctx.reservation.settle(cost, tokens, self._clock()))
            ctx.reservation = None
        return cost

    # -- helpers -------------------------------------------------------------------------------
    async def _identify(self, request: Request, scope: str) -> _Verified:
        authorization = _header(request, b"authorization")
        return self._usable(self._known(authorization) or await self._verify(authorization), scope, self._clock())

    def _known(self, authorization: bytes | None) -> _Verified | None:
        """The key verified with this very header before, if the cache still holds the grant it matched."""
        if authorization is None:
            return None
        verified = self._verified.get(authorization[:_HEAD])
        if (verified is None or not hmac.compare_digest(authorization, verified.header)
                or self.cache.fresh(verified.prefix) is not verified.grant):
            return None
        return verified

    async def _verify(self, authorization: bytes | None) -> _Verified:
        """Parse the header, load the key's grant and check the key against its hash."""
        token = bearer_token(authorization.decode("latin-1") if authorization is not None else None)
        if token is None:
            raise AuthenticationError("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                                      code="missing_api_key")
        prefix = key_prefix(token)
        if prefix is None or self.hasher is None:
            raise AuthenticationError(_BAD_KEY)
        grant = await self.cache.get(prefix)
        if grant is None or not self.hasher.matches(token, grant.hash):
            raise AuthenticationError(_BAD_KEY)
        assert authorization is not None  # a token came from it
        if len(self._verified) >= 100_000:
            self._verified.clear()
        verified = self._verified[authorization[:_HEAD]] = _Verified(grant, prefix, authorization)
        return verified

    def _usable(self, verified: _Verified, scope: str, now: float) -> _Verified:
        grant = verified.grant
        if grant.revoked:
            raise AuthenticationError("This API key has been revoked.", code="revoked_api_key")
        if verified.expires <= now:
            raise AuthenticationError("This API key has expired.", code="expired_api_key")
        if scope not in grant.scopes:
            raise PermissionDenied(f"This API key does not have the '{scope}' scope.", code="insufficient_scope")
        return verified

    def _worst_case(self, body_bytes: int, ctx: RequestContext) -> tuple[int, float]:
        """The most tokens and dollars the request can use: what its budget reservation holds.

        A prompt has at most as many tokens as its body has bytes (every token is at least one byte),
        and fits in the context; each of the ``n`` choices is at most ``max_tokens``, else the model's context.
        """
        if ctx.endpoint == "images.generations":  # priced per image: n of them at most
            return 0, self.prices.cost(ctx.model, 0, 0, ctx.choices)
        context = self.contexts.get(ctx.model or "", 0)
        if ctx.endpoint == "embeddings":
            prompt, output = body_bytes, 0
        else:
            prompt = min(body_bytes, context) if context else body_bytes
            output = (context if ctx.max_tokens is None else ctx.max_tokens) * ctx.choices
        return prompt + output, self.prices.cost(ctx.model, prompt, output)


def _header(request: Request, name: bytes) -> bytes | None:
    """The first value of a header, from the raw ASGI list (servers send lower-case names), as Starlette's
    ``Headers.get`` gives it, without building a ``Headers`` object per request (an ASGI server may send any
    iterable of pairs, lists included)."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value
    return None


def _refusal(plan: Plan, failed: int, raw: RawHeaders) -> RateLimited:
    meter: Meter = plan.meters[failed]
    headers = {name.decode(): value.decode() for name, value in raw}
    whose = "your team" if meter.subject == "team" else "this API key"
    retry = {"Retry-After": str(max(1, math.ceil(meter.reset)))}
    if meter.name.startswith("budget_"):
        amount = f"${meter.limit:g}" if meter.name == "budget_usd" else f"{int(meter.limit)} tokens"
        period = {"day": "daily", "month": "monthly", "total": "total"}[meter.period]
        # Retrying soon cannot help: tell the official clients not to.
        return RateLimited(f"The {period} budget of {amount} of {whose} is spent (running requests included).",
                           code="budget_exceeded", headers={**headers, **retry, "x-should-retry": "false"})
    if meter.name == "parallel":
        return RateLimited(f"Too many parallel requests: {whose} may run {int(meter.limit)} at a time.",
                           code="parallel_limit_exceeded", headers={**headers, **retry})
    unit = "requests" if meter.name == "requests" else "tokens"
    return RateLimited(f"Rate limit reached for {whose}: {int(meter.limit)} {unit} per minute.",
                       code="rate_limit_exceeded", headers={**headers, **retry})
