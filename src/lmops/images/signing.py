"""Signed image URLs: ``?expires=<epoch seconds>&signature=<hex HMAC-SHA256 of "<image id>.<expires>">``.

The signing key is derived from the server secret (HMAC of a fixed label), so an image URL's signature never
uses the key that hashes API keys itself. A URL needs no API key: whoever holds it may fetch the image until
it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from lmops.protocol.errors import PermissionDenied

_LABEL = b"lmops image URL signatures v1"


def signing_key(server_secret: bytes, label: bytes = _LABEL) -> bytes:
    """The key image URLs (or, with another ``label``, other signed things) are signed with, derived from the
    server secret: each use gets its own key."""
    return hmac.new(server_secret, label, hashlib.sha256).digest()


class UrlSigner:
    def __init__(self, key: bytes, ttl_seconds: int, clock: Callable[[], float] = time.time):
        if len(key) < 16:
            raise ValueError("an image URL signing key must be at least 16 bytes")
        self._key = key
        self.ttl = ttl_seconds
        self._clock = clock

    def signature(self, image_id: str, expires: int) -> str:
        return hmac.new(self._key, f"{image_id}.{expires}".encode(), hashlib.sha256).hexdigest()

    def query(self, image_id: str) -> str:
        """The query string of a URL for ``image_id`` valid for ``ttl`` seconds from now."""
        expires = int(self._clock()) + self.ttl
        return f"expires={expires}&signature={self.signature(image_id, expires)}"

    def check(self, image_id: str, expires: str | None, signature: str | None) -> int:
        """The seconds the URL has left; PermissionDenied (403) for a missing, forged or expired signature."""
        if not expires or not signature or not expires.isascii() or not expires.isdigit() or len(expires) > 12:
            raise PermissionDenied("This image URL is not signed: it needs its expires and signature parameters.",
                                   code="invalid_signature")
        if not hmac.compare_digest(self.signature(image_id, int(expires)).encode(),
                                   signature.encode("utf-8", "replace")):
            raise PermissionDenied("This image URL's signature does not match.", code="invalid_signature")
        left = int(expires) - int(self._clock())
        if left <= 0:
            raise PermissionDenied("This image URL has expired.", code="url_expired")
        return left
