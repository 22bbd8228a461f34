"""The browser's half of a single sign-on in progress: state, nonce, PKCE verifier and redirect URI, in a short-lived
cookie signed (HMAC-SHA256) with a key derived from the server secret, so lmops keeps nothing between the
redirect to the provider and the callback (any gateway process may take the callback)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from lmops.images.signing import signing_key

COOKIE = "lmops_sso"
COOKIE_PATH = "/api/chat/sso"
LABEL = b"lmops chat sso state v1"
MAX_COOKIE = 4096


class SignOnError(Exception):
    """A sign-in that cannot go on; ``code`` names the reason for the user, the message is for the log."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code


class StateError(SignOnError):
    """The cookie is missing, forged, expired, or the callback's state is not its state."""


@dataclass(frozen=True)
class Pending:
    state: str
    nonce: str
    verifier: str  # the PKCE code_verifier (RFC 7636: 43 to 128 characters)
    redirect_uri: str
    expires: int

    @property
    def challenge(self) -> str:
        """The S256 code_challenge: BASE64URL(SHA256(verifier)) without padding."""
        return _b64(hashlib.sha256(self.verifier.encode()).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class StateSigner:
    def __init__(self, server_secret: bytes, ttl_seconds: int, clock: Callable[[], float] = time.time):
        self._key = signing_key(server_secret, LABEL)
        self.ttl = ttl_seconds
        self._clock = clock

    def new(self, redirect_uri: str) -> Pending:
        return Pending(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48), redirect_uri,
                       int(self._clock()) + self.ttl)

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def seal(self, pending: Pending) -> str:
        payload = _b64(orjson.dumps({"s": pending.state, "n": pending.nonce, "v": pending.verifier,
                                     "r": pending.redirect_uri, "e": pending.expires}))
        return f"{payload}.{self._mac(payload)}"

    def open(self, cookie: str | None, state: str | None) -> Pending:
        """The sign-in the cookie holds, checked against the callback's ``state`` (in constant time)."""
        if not cookie or len(cookie) > MAX_COOKIE or "." not in cookie:
            raise StateError("invalid_state", "no sign-in cookie: the sign-in did not start in this browser")
        payload, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(self._mac(payload).encode(), mac.encode("utf-8", "replace")):
            raise StateError("invalid_state", "the sign-in cookie's signature does not match")
        try:
            data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            pending = Pending(str(data["s"]), str(data["n"]), str(data["v"]), str(data["r"]), int(data["e"]))
        except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise StateError("invalid_state", "the sign-in cookie is malformed") from None
        if pending.expires <= self._clock():
            raise StateError("expired", "the sign-in took longer than allowed")
        if not state or not hmac.compare_digest(pending.state.encode(), state.encode("utf-8", "replace")):
            raise StateError("invalid_state", "the callback's state is not this browser's")
        return pending
