"""Web passwords: argon2id hashes (argon2-cffi's defaults), verified off the event loop.

A sign-in for an unknown user, or a user without a password, still runs one verification (against a
hash made at start), so that the answer's timing does not tell which names exist.
"""

from __future__ import annotations

import asyncio
import secrets
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
MAX_LENGTH = 1024


def password_problem(password: str) -> str | None:
    """Why a new password is refused, if it is."""
    if len(password) < MIN_LENGTH:
        return f"A password needs at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"A password has at most {MAX_LENGTH} characters."
    return None


class Passwords:
    def __init__(self, parallel: int = 4) -> None:
        self.hasher = PasswordHasher()
        self._slots = asyncio.Semaphore(parallel)  # each verification holds 64 MiB: a burst waits, not swaps

    @cached_property
    def _dummy(self) -> str:
        """Made at the first sign-in, not at start: a hash costs tens of milliseconds and 64 MiB."""
        return self.hasher.hash(secrets.token_hex(16))

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; ``None`` (no such user or no password) verifies a dummy hash."""
        async with self._slots:
            return await asyncio.to_thread(self._verify, stored, password[:MAX_LENGTH])

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False
