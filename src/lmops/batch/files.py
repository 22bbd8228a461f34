"""The files store: file bytes under ``data_dir/files``, their metadata in ``batch_files``, scoped by team."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from lmops.ids import new_id
from lmops.batch.multipart import receive_multipart
from lmops.batch.tables import FILES
from lmops.protocol.errors import InvalidRequest, NotFound

PURPOSES = {"batch", "batch_output", "enrichment"}
UPLOAD_PURPOSES = sorted(PURPOSES - {"batch_output"})  # what a client may upload (lmops writes the outputs)
READ_CHUNK = 256 * 1024


class FileStore:
    def __init__(self, db: AsyncEngine, data_dir: str | os.PathLike[str], max_upload_bytes: int):
        self.db = db
        self.root = Path(data_dir) / "files"
        self.max_upload_bytes = max_upload_bytes

    def ensure_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # -- writing -------------------------------------------------------------------------------
    async def upload(self, request: Request, team_id: str, purpose: str | None = None) -> tuple[Any, dict[str, str]]:
        """Receive a multipart upload (a ``file`` part, and ``purpose`` unless given), streamed to disk.

        Returns the file row and the other form fields.
        """
        self.ensure_dirs()
        file_id = new_id("file-")
        path = self.root / file_id
        up = await receive_multipart(request, path, self.max_upload_bytes)
        try:
            purpose = purpose or up.fields.get("purpose")
            if up.path is None:
                raise InvalidRequest("The upload has no file part.", param="file")
            if purpose not in UPLOAD_PURPOSES:
                allowed = ", ".join(map(repr, UPLOAD_PURPOSES))
                raise InvalidRequest(f"purpose must be one of {allowed}, not {purpose!r}.", param="purpose")
            row = await self._record(file_id, team_id, purpose, up.filename or "upload", up.size)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return row, up.fields

    @contextmanager
    def writer(self) -> Iterator[tuple[str, BinaryIO]]:
        """A new file to write (blocking writes): ``with store.writer() as (file_id, f)``; record it after."""
        self.ensure_dirs()
        file_id = new_id("file-")
        path = self.root / file_id
        try:
            with open(path, "wb") as f:
                yield file_id, f
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    async def save_bytes(self, team_id: str, purpose: str, filename: str, data: bytes) -> Any:
        with self.writer() as (file_id, f):
            f.write(data)
        return await self._record(file_id, team_id, purpose, filename, len(data))

    async def record(self, file_id: str, team_id: str, purpose: str, filename: str) -> Any:
        return await self._record(file_id, team_id, purpose, filename, (self.root / file_id).stat().st_size)

    async def _record(self, file_id: str, team_id: str, purpose: str, filename: str, size: int) -> Any:
        row = {"id": file_id, "team_id": team_id, "purpose": purpose, "filename": filename[:500], "bytes": size,
               "created_at": int(time.time()), "path": file_id}
        async with self.db.begin() as conn:
            await conn.execute(insert(FILES), row)
        return _Row(row)

    # -- reading -------------------------------------------------------------------------------
    async def get(self, team_id: str, file_id: str) -> Any:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(FILES).where(FILES.c.id == file_id, FILES.c.team_id == team_id))).first()
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return row

    async def list(self, team_id: str, *, purpose: str | None = None, limit: int = 10000,
                   after: str | None = None, order: str = "desc") -> list[Any]:
        q = select(FILES).where(FILES.c.team_id == team_id)
        if purpose:
            q = q.where(FILES.c.purpose == purpose)
        desc = order != "asc"
        if after:
            cur = await self.get(team_id, after)
            key = (FILES.c.created_at, FILES.c.id)
            q = q.where(tuple_(*key) < (cur.created_at, cur.id) if desc else tuple_(*key) > (cur.created_at, cur.id))
        q = q.order_by(*((FILES.c.created_at.desc(), FILES.c.id.desc()) if desc
                         else (FILES.c.created_at, FILES.c.id))).limit(limit)
        async with self.db.connect() as conn:
            return list((await conn.execute(q)).all())

    def path(self, row: Any) -> Path:
        return self.root / row.path

    async def chunks(self, row: Any) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self.path(row), "rb") as f:
            while chunk := await f.read(READ_CHUNK):
                yield chunk

    async def delete(self, team_id: str, file_id: str) -> None:
        row = await self.get(team_id, file_id)
        async with self.db.begin() as conn:
            await conn.execute(delete(FILES).where(FILES.c.id == row.id))
        self.path(row).unlink(missing_ok=True)


class _Row:
    """A just-inserted row with attribute access, like the rows the database returns."""

    def __init__(self, data: dict[str, Any]):
        self.__dict__.update(data)
