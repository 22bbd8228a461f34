"""Intake: read a job's input file line by line, check it, and queue one item per line.

OpenAI batches are checked whole before anything runs (any invalid line fails the batch, like OpenAI;
errors name their line): their items are written ``staged`` as the lines are checked, and made claimable
all at once when the whole file passed. Enrichment jobs queue every good record at once (workers process
items while intake goes on) and keep each bad line as a failed item with its line-numbered error: one bad
record never fails a job.

Crash-safe and resumable: each chunk of items is written in one transaction with the intake's progress
(``Progress``: the byte offset and line reached, counts and errors so far), and only while this worker
still owns the job's upkeep lease. A worker that takes over after a crash resumes at the saved offset, so
a crash loop slows an intake down but never restarts it from the top. Items are unique per (job, line)
besides.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

import orjson
from sqlalchemy import select

from lmops.batch.calls import ENDPOINTS, validate_request
from lmops.batch.db import insert_ignore
from lmops.batch.files import FileStore
from lmops.batch.jobs import Jobs
from lmops.batch.tables import ITEMS
from lmops.protocol.errors import APIError

MAX_ERRORS = 100
_BOM = b"\xef\xbb\xbf"


@dataclass
class Line:
    """One input line: its number and either a payload (with custom_id) or an error."""

    number: int
    custom_id: str | None = None
    payload: Any = None
    error: dict[str, Any] | None = None
    end: int = 0  # byte offset just past the line (JSONL; a CSV resumes by record count)


@dataclass
class Progress:
    """How far an intake got; saved with every chunk of items it queues (``batch_jobs.intake``)."""

    offset: int = 0  # bytes of the file consumed (JSONL)
    line: int = 0  # number of the last line consumed
    items: int = 0  # lines queued as items (a CSV resumes after this many records)
    bad: int = 0  # of which failed already (enrichment) or invalid (batch: the batch fails)
    errors: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_ERRORS

    @classmethod
    def load(cls, saved: str | None) -> "Progress":
        return cls(**orjson.loads(saved)) if saved else cls()

    def dump(self) -> str:
        return orjson.dumps(asdict(self)).decode()


def _error(line: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": f"Line {line}: {message}", "param": param, "line": line}


@dataclass
class BatchLineChecker:
    """Checks OpenAI batch input lines: JSON object, custom_id unique, method POST, url = the batch's endpoint,
    body valid for that endpoint with a known model."""

    endpoint: str
    models: set[str]
    max_line_bytes: int
    seen: set[int] = field(default_factory=set)  # 64-bit hashes of custom_ids: small even for millions

    def check(self, number: int, raw: bytes) -> Line:
        if len(raw) > self.max_line_bytes:
            return Line(number, error=_error(number, "line_too_long", f"longer than {self.max_line_bytes} bytes"))
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Line(number, error=_error(number, "invalid_json_line", f"not valid JSON ({exc})"))
        if not isinstance(obj, dict):
            return Line(number, error=_error(number, "invalid_json_line", "must be a JSON object"))
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            return Line(number, error=_error(number, "missing_required_parameter",
                                             "custom_id is required (a non-empty string)", "custom_id"))
        key = hash(cid)
        if key in self.seen:
            return Line(number, error=_error(number, "duplicate_custom_id",
                                             f"custom_id '{cid}' is used by an earlier line", "custom_id"))
        self.seen.add(key)
        if obj.get("method", "POST") != "POST":
            return Line(number, error=_error(number, "invalid_method", "method must be POST", "method"))
        if obj.get("url") != self.endpoint:
            return Line(number, error=_error(number, "mismatched_endpoint",
                                             f"url {obj.get('url')!r} differs from the batch's endpoint "
                                             f"{self.endpoint!r}", "url"))
        body = obj.get("body")
        if not isinstance(body, dict):
            return Line(number, error=_error(number, "missing_required_parameter", "body must be an object",
                                             "body"))
        try:
            validate_request(ENDPOINTS[self.endpoint], body)
        except APIError as exc:
            return Line(number, error=_error(number, "invalid_request", exc.message,
                                             f"body.{exc.param}" if exc.param else "body"))
        if body.get("model") not in self.models:
            return Line(number, error=_error(number, "model_not_found",
                                             f"model '{body.get('model')}' does not exist", "body.model"))
        return Line(number, cid, body)


def enrichment_lines(f: BinaryIO, fmt: str, id_field: str | None, max_line_bytes: int,
                     start: Progress | None = None) -> Iterator[Line]:
    """Records from a JSONL or CSV upload, after those ``start`` consumed; bad lines come back with their error."""
    start = start or Progress()
    if fmt == "csv":
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte order mark, which would stick to the first column name
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline=""))
        first = 2
        for index, record in enumerate(reader):
            number, first = first, reader.line_num + 1
            if index < start.items:
                continue  # queued before a crash (CSV records span lines: resumed by count, not offset)
            if None in record:
                yield Line(number, error=_error(number, "invalid_record", "more values than columns"))
                continue
            yield Line(number, _custom_id(record, id_field), record)
        return
    for number, raw, end in _numbered(f, start):
        if not raw.strip():
            continue
        if len(raw) > max_line_bytes:
            yield Line(number, error=_error(number, "line_too_long", f"longer than {max_line_bytes} bytes"), end=end)
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield Line(number, error=_error(number, "invalid_json_line", f"not valid JSON ({exc})"), end=end)
            continue
        if not isinstance(record, dict):
            yield Line(number, error=_error(number, "invalid_record", "a record must be a JSON object"), end=end)
            continue
        yield Line(number, _custom_id(record, id_field), record, end=end)


def _custom_id(record: dict[str, Any], id_field: str | None) -> str | None:
    for key in ((id_field,) if id_field else ("id", "sku", "custom_id")):
        value = record.get(key)
        if value is not None:
            return str(value)[:500]
    return None


def _numbered(f: BinaryIO, start: Progress) -> Iterator[tuple[int, bytes, int]]:
    """The file's lines after ``start``, with their numbers and end offsets, without the UTF-8 byte order mark
    that Windows tools put first."""
    f.seek(start.offset)
    offset = start.offset
    for number, raw in enumerate(f, start.line + 1):
        offset += len(raw)
        yield number, raw[3:] if number == 1 and raw.startswith(_BOM) else raw, offset


def _batch_lines(f: BinaryIO, checker: BatchLineChecker, start: Progress) -> Iterator[Line]:
    for number, raw, end in _numbered(f, start):
        if raw.strip():
            line = checker.check(number, raw)
            line.end = end
            yield line


class Intake:
    def __init__(self, jobs: Jobs, files: FileStore, models: set[str], chunk: int, max_line_bytes: int):
        self.jobs, self.files, self.models = jobs, files, models
        self.chunk, self.max_line_bytes = chunk, max_line_bytes
        self._insert = insert_ignore(jobs.db, ITEMS, "job_id", "seq")

    async def run(self, job: Any, owner: str) -> None:
        try:
            source = await self.files.get(job.team_id, job.input_file_id)
        except APIError:
            await self.jobs.finish(job.id, owner, "failed", failed_at=int(time.time()), errors=_errors(
                [{"code": "file_not_found", "message": f"Input file {job.input_file_id} no longer exists.",
                  "param": "input_file_id", "line": None}]))
            return
        path = self.files.path(source)
        progress = Progress.load(job.intake)
        lines: Callable[[BinaryIO], Iterator[Line]]
        if job.kind == "batch":
            checker = BatchLineChecker(job.endpoint, self.models, self.max_line_bytes)
            if progress.items:  # resumed: the custom_ids of the lines checked before
                checker.seen.update(hash(c) for c in await self._custom_ids(job.id))
            lines = lambda f: _batch_lines(f, checker, progress)  # noqa: E731
        else:
            params = orjson.loads(job.params or "{}")
            fmt, id_field = params.get("format", "jsonl"), params.get("id_field")
            lines = lambda f: enrichment_lines(f, fmt, id_field, self.max_line_bytes, progress)  # noqa: E731
        if not await self._queue(job, owner, path, lines, progress):
            return  # cancelled, or the job's upkeep lease was lost: its new owner goes on
        if job.kind == "batch":
            await self._release_batch(job, owner, progress)
            return
        errors = progress.errors
        if progress.items == 0:
            errors = errors or [{"code": "empty_file", "message": "The upload has no records.", "param": None,
                                 "line": None}]
        await self.jobs.started(job.id, owner, progress.items, progress.bad, errors)

    async def _release_batch(self, job: Any, owner: str, progress: Progress) -> None:
        """The whole file was checked: fail the batch on any invalid line, else make its items claimable."""
        if progress.bad or not progress.items:
            errors = progress.errors or [{"code": "empty_file", "message": "The input file has no requests.",
                                          "param": None, "line": None}]
            await self.jobs.fail_intake(job.id, owner, _errors(errors))
        else:
            await self.jobs.started(job.id, owner, progress.items, 0, [], release_staged=True)

    async def _custom_ids(self, job_id: str) -> list[str]:
        async with self.jobs.db.connect() as conn:
            return list((await conn.execute(select(ITEMS.c.custom_id).where(ITEMS.c.job_id == job_id))).scalars())

    async def _queue(self, job: Any, owner: str, path: Any, lines: Callable[[BinaryIO], Iterator[Line]],
                     progress: Progress) -> bool:
        """Queue the lines after ``progress``, a chunk per transaction with the progress it reached; False when
        the job stopped being this owner's intake meanwhile (cancelled, or its lease lost)."""
        staged = "staged" if job.kind == "batch" else "pending"
        with open(path, "rb") as f:
            it = lines(f)
            while True:
                chunk: list[Line] = await asyncio.to_thread(_take, it, self.chunk)
                if not chunk:
                    return True
                now = time.time()
                rows = []
                for line in chunk:
                    progress.line, progress.offset = line.number, line.end
                    if line.error is not None:
                        progress.bad += 1
                        if len(progress.errors) < MAX_ERRORS:
                            progress.errors.append(line.error)
                    if job.kind == "batch" and (progress.bad or line.error is not None):
                        continue  # the batch fails: its remaining lines are only checked, for their errors
                    progress.items += 1
                    rows.append({"job_id": job.id, "team_id": job.team_id, "workflow": job.workflow,
                                 "seq": line.number, "custom_id": line.custom_id,
                                 "payload": orjson.dumps(line.payload).decode(),
                                 "status": "failed" if line.error else staged, "attempts": 0,
                                 "available_at": now, "created_at": now,
                                 "error": orjson.dumps(line.error).decode() if line.error else None,
                                 "finished_at": now if line.error else None})
                if not await self.jobs.queue_items(job.id, owner, self._insert, rows, progress.dump()):
                    return False
                if job.kind == "batch" and len(progress.errors) >= MAX_ERRORS:
                    return True  # enough to show: the batch fails


def _take(it: Iterator[Line], n: int) -> list[Line]:
    out = []
    for line in it:
        out.append(line)
        if len(out) >= n:
            break
    return out


def _errors(data: list[dict[str, Any]]) -> str:
    return orjson.dumps({"object": "list", "data": data}).decode()
