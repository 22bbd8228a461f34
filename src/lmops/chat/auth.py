"""Sign-in and who calls: a session cookie (HttpOnly, SameSite=Lax, Secure over https) with a CSRF token bound
to the session, or an API key in the Authorization header (no cookie, so no CSRF token needed).

With access control off (laptop mode) there is one local user: signing in needs no password and gives a
session of that user, and any Authorization header is the local user too (as ``/v1`` admits anything).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from starlette.requests import Request

from lmops.chat.accounts import Accounts, token_hash
from lmops.chat.identity import ChatUser, local_user, member
from lmops.chat.passwords import Passwords
from lmops.chat.throttle import Throttle
from lmops.protocol.errors import AuthenticationError, PermissionDenied
from lmops.serving.context import Guard
from lmops.ttl_cache import TtlCache

COOKIE = "lmops_session"
CSRF_HEADER = "x-csrf-token"
BAD_CREDENTIALS = "Incorrect username or password."


@dataclass(frozen=True)
class SignedIn:
    user: ChatUser
    token: str  # the cookie's value (stored only as its hash)
    csrf_token: str
    expires_at: datetime


class ChatAuth:
    def __init__(self, guard: Guard, accounts: Accounts, *, access_enabled: bool, session_hours: float,
                 throttle: Throttle, session_cache_seconds: float):
        self.guard = guard
        self.accounts = accounts
        self.access_enabled = access_enabled
        self.session_hours = session_hours
        self.passwords = Passwords()
        self.throttle = throttle
        self.sessions: TtlCache[tuple[ChatUser, str]] = TtlCache(self._load_session, session_cache_seconds)

    async def user(self, request: Request, *, write: bool) -> ChatUser:
        """Who calls; ``write``: a state-changing request, which a session must confirm with its CSRF token."""
        if request.headers.get("authorization") is not None:
            principal = await self.guard.authenticate(request, "inference")
            if not self.access_enabled:
                return local_user(via_key=True)
            return ChatUser(principal, principal.user_id or f"key:{principal.key_id}", True)
        signed = await self.session(request)
        if signed is None:
            raise AuthenticationError("Sign in first (POST /api/chat/session), or send an API key.",
                                      code="not_signed_in")
        user, csrf = signed
        if write and not hmac.compare_digest(request.headers.get(CSRF_HEADER, "").encode(), csrf.encode()):
            raise PermissionDenied("The X-CSRF-Token header is missing or wrong.", code="csrf_failed")
        return user

    async def session(self, request: Request) -> tuple[ChatUser, str] | None:
        """The signed-in user of the request's session cookie and the session's CSRF token (cached for
        ``session_cache_seconds``: a session ended in another process ends here within that time)."""
        token = request.cookies.get(COOKIE)
        return await self.sessions.get(token_hash(token)) if token else None

    async def _load_session(self, hashed: str) -> tuple[ChatUser, str] | None:
        found = await self.accounts.session(hashed)
        if found is None:
            return None
        user_id, csrf, _ = found
        if not self.access_enabled:
            return local_user(), csrf
        account = await self.accounts.user(user_id)
        if account is None or account.user_id != user_id:
            return None
        return member(account.user_id, account.name, account.team_id, account.role), csrf

    async def sign_in(self, username: str, password: str, address: str) -> SignedIn:
        """Check the password and open a session. Failures are throttled per client address and user name: behind
        a proxy every client has the proxy's address, and one client's failures must not lock out every user."""
        if self.access_enabled:
            attempt = f"{address}|{username.lower()}"
            await self.throttle.check(attempt)
            account = await self.accounts.user(username)
            stored = await self.accounts.password_hash(account.user_id) if account else None
            if not await self.passwords.verify(stored, password) or account is None:
                await self.throttle.failed(attempt)
                raise AuthenticationError(BAD_CREDENTIALS, code="invalid_credentials")
            user = member(account.user_id, account.name, account.team_id, account.role)
        else:
            user = local_user()
        return await self.open_session(user)

    async def open_session(self, user: ChatUser) -> SignedIn:
        """A new session of ``user`` (signed in by password or single sign-on)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = datetime.now(timezone.utc) + timedelta(hours=self.session_hours)
        await self.accounts.open_session(token, user.owner, csrf, expires)
        self.sessions.invalidate()  # a single sign-on may have moved the user to another team: no stale session
        return SignedIn(user, token, csrf, expires)

    async def set_password(self, user_id: str, password: str) -> None:
        """Set a user's web password; the user's sessions end (in this process at once)."""
        hashed = await asyncio.to_thread(self.passwords.hash, password)  # tens of ms: off the event loop
        await self.accounts.set_password_hash(user_id, hashed)
        self.sessions.invalidate()

    async def sign_out(self, request: Request) -> None:
        token = request.cookies.get(COOKIE)
        if token:
            await self.accounts.close_session(token)
            self.sessions.invalidate(token_hash(token))
