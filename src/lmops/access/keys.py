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


GIVEN_KEY_MIN_SECRET = 32  # characters after the prefix of a key given from outside (the bootstrap admin key)
GIVEN_KEY_MIN_DISTINCT = 8


def weak_key_problem(text: str) -> str | None:
    """Why a well-formed key given from outside (``$LMOPS_ADMIN_KEY``) is too easy to guess, or None.

    Keys lmops makes have 43 random characters after the prefix; a key a person chose is checked for what
    makes it guessable: too short, few different characters, runs (``aaaa``, ``1234``) or a repeated pattern.
    Random keys (``secrets.token_urlsafe(32)``, even ``token_hex(16)``) pass.
    """
    secret = text.split("-", 2)[2]
    if len(secret) < GIVEN_KEY_MIN_SECRET:
        return (f"it has {len(secret)} characters after the prefix; an admin key needs at least "
                f"{GIVEN_KEY_MIN_SECRET} random ones")
    if len(set(secret)) < GIVEN_KEY_MIN_DISTINCT:
        return (f"its part after the prefix uses {len(set(secret))} different characters (at least "
                f"{GIVEN_KEY_MIN_DISTINCT}): it is not random")
    if _mostly_runs(secret) or _repeats(secret):
        return "its part after the prefix is made of runs (aaaa, 1234) or a repeated pattern: it is not random"
    return None


def _mostly_runs(text: str) -> bool:
    """More than half of the characters continue the step of the two before them (aaaa, 1234, zyxw)."""
    steps = [ord(b) - ord(a) for a, b in zip(text, text[1:], strict=False)]
    runs = sum(1 for a, b in zip(steps, steps[1:], strict=False) if a == b)
    return runs * 2 > len(steps) - 1


def _repeats(text: str) -> bool:
    """Three quarters or more of the text repeats what stood ``p`` characters before, for some period ``p``."""
    for period in range(1, len(text) // 2 + 1):
        same = sum(1 for i in range(period, len(text)) if text[i] == text[i - period])
        if same * 4 >= (len(text) - period) * 3:
            return True
    return False


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
