"""API key text: ``lmops-<prefix>-<secret>``, stored only as an HMAC-SHA256 under the server secret.

The prefix is visible (it identifies the key in lists and lookups); the whole text is hashed,
and hashes are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_TAG = "lmops"
PREFIX_LENGTH = 8
SECRET_MIN_LENGTH = 16  # characters after the prefix: README.md documents the same form
_PREFIX_ALPHABET = "abcdefghijkmnopqrstuvwxyz23456789"  # no look-alikes (l, 0, 1)


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: ``text`` is shown once and never stored."""

    text: str
    prefix: str
    hash: str


class KeyHasher:
    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the key-hashing secret must be at least 16 bytes")
        self._secret = secret

    def hash(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def matches(self, text: str, stored_hash: str) -> bool:
        return hmac.compare_digest(self.hash(text), stored_hash)

    def new_key(self) -> NewKey:
        prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
        text = f"{KEY_TAG}-{prefix}-{secrets.token_urlsafe(32)}"
        return NewKey(text, prefix, self.hash(text))

    def adopt(self, text: str) -> NewKey:
        """Store a key given from outside (e.g. ``LMOPS_ADMIN_KEY``); it must have the lmops format."""
        problem = key_format_problem(text)
        if problem is not None:
            raise ValueError(problem)
        prefix = key_prefix(text)
        assert prefix is not None
        return NewKey(text, prefix, self.hash(text))


KEY_FORMAT = (f"{KEY_TAG}-<prefix>-<secret>: a prefix of exactly {PREFIX_LENGTH} lowercase letters and digits, "
              f"then at least {SECRET_MIN_LENGTH} more characters (no spaces)")


def key_format_problem(text: str) -> str | None:
    """Why ``text`` cannot be an lmops key (None when it can): the documented form, said in full."""
    if key_prefix(text) is not None and text.isascii() and text.isprintable() and " " not in text:
        return None
    return f"a key must look like {KEY_FORMAT}, e.g. {KEY_TAG}-abcd2345-{'x' * SECRET_MIN_LENGTH}"


def key_prefix(text: str) -> str | None:
    """The visible prefix of a well-formed key, or None."""
    parts = text.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_TAG or len(parts[1]) != PREFIX_LENGTH or len(parts[2]) < SECRET_MIN_LENGTH:
        return None
    prefix = parts[1]
    return prefix if prefix.isascii() and prefix.isalnum() and prefix == prefix.lower() else None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
