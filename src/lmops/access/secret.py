"""The server secret: the HMAC key of the stored API key hashes, kept out of the database.

A copy of the database must not be enough to test guessed keys offline, so the secret never lives in it.
It is read from, first found:

1. ``$LMOPS_SECRET`` (``access.secret_env``): the secret itself, 16 or more characters;
2. a secret file, ``$LMOPS_SECRET_FILE`` or ``access.secret_file`` (a mounted Kubernetes or Docker secret): the
   same text, surrounding whitespace ignored, so a secret moves between the variable and a file as it is;
3. on SQLite only (one host, a laptop): ``lmops.secret`` beside the database file, created readable by its owner
   only (0600) on the first start and read on every start after.

On any other database (PostgreSQL) lmops never makes a secret up, since each replica would make its own:
without 1 or 2 it refuses to start. A secret file named on SQLite is created the same way when missing.

**Installs from before** kept a generated secret in the database (table ``server_secrets``), under which their
keys are stored. Their keys keep working, and the secret leaves the database: on SQLite the first start writes
it to the secret file; on PostgreSQL ``lmops keys export-secret FILE`` does (lmops cannot know where every
replica reads its file from). That secret is 32 random bytes, not text, so the file holds it as
``hex:<64 hex digits>``, a form that means those bytes (in ``$LMOPS_SECRET`` too). The database's copy is
deleted only by a start that has read the same secret from outside the database: never before the secret is
safely elsewhere. A copy that differs from the secret in use is left alone (its keys cannot verify), with a
warning saying how to write it out.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import make_url

from lmops.config import Settings

log = logging.getLogger("lmops.access")

SECRET_MIN_LENGTH = 16
DEFAULT_FILE_NAME = "lmops.secret"
GENERATE = "python3 -c 'import secrets; print(secrets.token_hex(32))'"
_BYTES_FORM = re.compile(r"hex:((?:[0-9a-fA-F]{2}){16,})")


class SecretError(ValueError):
    """The secret is missing or unusable; the message says what to do."""


class LegacySecrets(Protocol):
    """What loading needs from the database: the secret an earlier lmops kept there, and whether keys exist."""

    async def legacy_secret(self) -> bytes | None: ...
    async def forget_legacy_secret(self) -> None: ...
    async def is_empty(self) -> bool: ...


@dataclass(frozen=True)
class SecretPlace:
    """Where a configuration's secret is read from."""

    env: str  # the variable that holds the secret itself
    file: Path | None  # the file that holds it: given, or beside a SQLite database; None for an in-memory one
    one_host: bool  # SQLite: a missing file may be created here
    database: str  # the database's kind, for messages

    @property
    def file_env(self) -> str:
        return f"{self.env}_FILE"


def secret_place(settings: Settings) -> SecretPlace:
    cfg = settings.access
    url = make_url(settings.database_url)
    one_host = url.get_backend_name() == "sqlite"
    given = os.environ.get(f"{cfg.secret_env}_FILE") or cfg.secret_file
    file = Path(given) if given else None
    if file is None and one_host and url.database not in (None, "", ":memory:"):
        file = Path(url.database).parent / DEFAULT_FILE_NAME
    backend = url.get_backend_name()
    return SecretPlace(cfg.secret_env, file, one_host, {"postgresql": "PostgreSQL"}.get(backend, backend))


def secret_bytes(text: str) -> bytes:
    """The HMAC key a secret's text stands for: its UTF-8 bytes, or the bytes a ``hex:`` form spells."""
    found = _BYTES_FORM.fullmatch(text)
    return bytes.fromhex(found.group(1)) if found else text.encode()


def read_secret_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(f"the secret file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise SecretError(f"cannot read the secret file {path}: {exc.strerror}") from None


def _short(text: str, where: str) -> str | None:
    if _BYTES_FORM.fullmatch(text) or len(text) >= SECRET_MIN_LENGTH:
        return None
    return f"{where} must be at least {SECRET_MIN_LENGTH} characters long (it has {len(text)})"


def secret_problem(settings: Settings) -> str | None:
    """What stops the secret from being read (None: it can be, or will be created), without the database: what
    ``lmops serve`` checks before it starts."""
    place = secret_place(settings)
    value = os.environ.get(place.env)
    if value:
        return _short(value, f"${place.env}")
    if place.file is None:
        return None if place.one_host else (
            f"on {place.database} the key-hashing secret must come from outside the database: set ${place.env} to "
            f"{SECRET_MIN_LENGTH} or more random characters ({GENERATE}), or ${place.file_env} (access.secret_file) "
            "to a file holding them, the same on every replica (an install that kept it in the database writes it "
            "out with `lmops keys export-secret FILE`)")
    if not place.file.exists():
        return None if place.one_host else (
            f"the secret file {place.file} does not exist: on {place.database} lmops does not make one up (each "
            f"replica would make its own); write {SECRET_MIN_LENGTH} or more random characters into it ({GENERATE}), "
            f"or set ${place.env}")
    try:
        text = read_secret_file(place.file)
    except SecretError as exc:
        return str(exc)
    return _short(text, f"the secret file {place.file}")


def write_secret_file(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``, readable by its owner only (0600); False when it exists already.

    Written whole under another name and linked into place, so a process starting at the same time reads either
    no file or the whole secret, and the first one written is the one every process uses.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            return False
        return True
    finally:
        draft.unlink(missing_ok=True)


async def load_secret(settings: Settings, store: LegacySecrets) -> bytes:
    """The key-hashing secret, from the first place that has it (module docstring); creates the SQLite file."""
    problem = secret_problem(settings)
    if problem:
        raise SecretError(problem)
    place = secret_place(settings)
    legacy = await store.legacy_secret()
    value = os.environ.get(place.env)
    if value:
        secret = secret_bytes(value)
    elif place.file is None:  # an in-memory SQLite database: it, and its keys, end with this process
        return legacy or secrets.token_bytes(32)
    else:
        if not place.file.exists():
            await _create(place.file, legacy, store)
        secret = secret_bytes(read_secret_file(place.file))
    if legacy is not None:
        if hmac.compare_digest(legacy, secret):
            await store.forget_legacy_secret()
            log.info("the key-hashing secret is read from outside the database now: its copy in the database "
                     "(table server_secrets) is deleted")
        else:
            log.warning("the database holds a key-hashing secret from an earlier lmops (table server_secrets) that "
                        "differs from the one in use: keys issued under it do not verify. To keep them, write it out "
                        "with `lmops keys export-secret FILE` and read it from there ($%s)", place.file_env)
    return secret


async def _create(path: Path, legacy: bytes | None, store: LegacySecrets) -> None:
    """On SQLite: the database's secret of an earlier lmops moved into ``path``, or a new one."""
    if legacy is not None:
        if write_secret_file(path, f"hex:{legacy.hex()}"):
            log.info("moved the key-hashing secret out of the database into %s (mode 0600): keep it with the "
                     "database, its keys do not verify without it", path)
        return
    if not await store.is_empty() and not path.exists():
        raise SecretError(f"the database holds API keys but the secret file {path} is missing: they were stored "
                          "under a secret that is not here. Put the file back (or set $LMOPS_SECRET as before); "
                          "a new secret would make every key fail")
    if write_secret_file(path, secrets.token_hex(32)):
        log.info("generated the key-hashing secret into %s (mode 0600): keep it with the database, API keys do "
                 "not verify without it", path)
