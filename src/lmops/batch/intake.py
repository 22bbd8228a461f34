"""Intake: read a job's input file line by line, check it, and queue one item per line.

OpenAI batches are checked whole before anything is queued (any invalid line fails the batch, like
OpenAI; errors name their line). Enrichment jobs queue every good record and keep each bad line as a
failed item with its line-numbered error: one bad record never fails a job. Re-running an intake
after a crash is safe: items are unique per (job, line).
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

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


def enrichment_lines(f: BinaryIO, fmt: str, id_field: str | None, max_line_bytes: int) -> Iterator[Line]:
    """Records from a JSONL or CSV upload; bad lines come back with their error."""
    if fmt == "csv":
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte order mark, which would stick to the first column name
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline=""))
        start = 2
        for record in reader:
            number, start = start, reader.line_num + 1
            if None in record:
                yield Line(number, error=_error(number, "invalid_record", "more values than columns"))
                continue
            yield Line(number, _custom_id(record, id_field), record)
        return
    for number, raw in _numbered(f):
        if not raw.strip():
            continue
        if len(raw) > max_line_bytes:
            yield Line(number, error=_error(number, "line_too_long", f"longer than {max_line_bytes} bytes"))
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield Line(number, error=_error(number, "invalid_json_line", f"not valid JSON ({exc})"))
            continue
        if not isinstance(record, dict):
            yield Line(number, error=_error(number, "invalid_record", "a record must be a JSON object"))
            continue
        yield Line(number, _custom_id(record, id_field), record)


def _custom_id(record: dict[str, Any], id_field: str | None) -> str | None:
    for key in ((id_field,) if id_field else ("id", "sku", "custom_id")):
        value = record.get(key)
        if value is not None:
            return str(value)[:500]
    return None


def _numbered(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """The file's lines with their numbers, without the UTF-8 byte order mark that Windows tools put first."""
    for number, raw in enumerate(f, 1):
        yield number, raw[3:] if number == 1 and raw.startswith(_BOM) else raw


def _batch_lines(f: BinaryIO, checker: BatchLineChecker) -> Iterator[Line]:
    for number, raw in _numbered(f):
        if raw.strip():
            yield checker.check(number, raw)


def _checked_batch_lines(f: BinaryIO) -> Iterator[Line]:
    """Lines of a batch file that was checked whole already: parse only."""
    for number, raw in _numbered(f):
        if raw.strip():
            obj = orjson.loads(raw)
            yield Line(number, obj["custom_id"], obj["body"])


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
        if job.kind == "batch":
            errors, count = await asyncio.to_thread(
                _check_all, path, BatchLineChecker(job.endpoint, self.models, self.max_line_bytes))
            if errors or not count:
                errors = errors or [{"code": "empty_file", "message": "The input file has no requests.",
                                     "param": None, "line": None}]
                await self.jobs.finish(job.id, owner, "failed", failed_at=int(time.time()), errors=_errors(errors))
                return
            lines = _checked_batch_lines  # every line passed the checks above
        else:
            params = orjson.loads(job.params or "{}")
            fmt, id_field = params.get("format", "jsonl"), params.get("id_field")
            lines = lambda f: enrichment_lines(f, fmt, id_field, self.max_line_bytes)  # noqa: E731
        total, bad, errors = await self._queue(job, owner, path, lines)
        if total == 0 and job.kind == "enrichment":
            errors = errors or [{"code": "empty_file", "message": "The upload has no records.", "param": None,
                                 "line": None}]
        await self.jobs.started(job.id, owner, total, bad, errors)

    async def _queue(self, job: Any, owner: str, path: Any, lines: Any) -> tuple[int, int, list[dict[str, Any]]]:
        total = bad = 0
        errors: list[dict[str, Any]] = []
        with open(path, "rb") as f:
            it = lines(f)
            while True:
                chunk: list[Line] = await asyncio.to_thread(_take, it, self.chunk)
                if not chunk:
                    break
                now = time.time()
                rows = []
                for line in chunk:
                    total += 1
                    if line.error is not None:
                        bad += 1
                        if len(errors) < MAX_ERRORS:
                            errors.append(line.error)
                    rows.append({"job_id": job.id, "team_id": job.team_id, "workflow": job.workflow,
                                 "seq": line.number, "custom_id": line.custom_id,
                                 "payload": orjson.dumps(line.payload).decode(),
                                 "status": "failed" if line.error else "pending", "attempts": 0,
                                 "available_at": now, "created_at": now,
                                 "error": orjson.dumps(line.error).decode() if line.error else None,
                                 "finished_at": now if line.error else None})
                async with self.jobs.db.begin() as conn:
                    await conn.execute(self._insert, rows)
                await self.jobs.extend(job.id, owner)
                if await self.jobs.status(job.id) != "validating":
                    break  # cancelled meanwhile
        return total, bad, errors


def _take(it: Iterator[Line], n: int) -> list[Line]:
    out = []
    for line in it:
        out.append(line)
        if len(out) >= n:
            break
    return out


def _check_all(path: Any, checker: BatchLineChecker) -> tuple[list[dict[str, Any]], int]:
    errors: list[dict[str, Any]] = []
    count = 0
    with open(path, "rb") as f:
        for line in _batch_lines(f, checker):
            count += 1
            if line.error is not None:
                errors.append(line.error)
                if len(errors) >= MAX_ERRORS:
                    break
    return errors, count


def _errors(data: list[dict[str, Any]]) -> str:
    return orjson.dumps({"object": "list", "data": data}).decode()
