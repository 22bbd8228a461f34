"""Export a user's conversations, one row per message: XLSX (openpyxl, write-only), CSV, JSON or Markdown.

Rows are read a page at a time (``ChatStore.messages_of``); CSV, JSON and Markdown are streamed as they are
read, an XLSX workbook is written in write-only mode (rows go to a temporary file, not a tree in memory) and
sent when complete.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import orjson

from lmops.chat.store import ChatStore

COLUMNS = ["conversation_id", "conversation_title", "time", "role", "model", "parameters", "prompt_tokens",
           "completion_tokens", "text"]
FORMATS = {"xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
           "csv": "text/csv; charset=utf-8", "json": "application/json", "md": "text/markdown; charset=utf-8"}
XLSX_CELL_MAX = 32_767  # Excel's limit on a cell's text


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


async def export_rows(store: ChatStore, owner: str, conversation_id: str | None = None
                      ) -> AsyncIterator[dict[str, Any]]:
    """The owner's messages (of one conversation, or of all, oldest conversation first), in order."""
    ids = [conversation_id] if conversation_id else await store.conversation_ids(owner)
    for ident in ids:
        conv = await store.get(owner, ident)
        async for m in store.messages_of(ident):
            yield {"conversation_id": ident, "conversation_title": conv["title"], "time": _iso(m["created_at"]),
                   "role": m["role"], "model": m["model"], "parameters": m["params"] or {},
                   "prompt_tokens": m["prompt_tokens"], "completion_tokens": m["completion_tokens"],
                   "text": m["content"]}


async def as_csv(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    async for row in rows:
        writer.writerow(["" if row[c] is None else (orjson.dumps(row[c]).decode() if c == "parameters" else row[c])
                         for c in COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


async def as_json(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    first = True
    yield b"["
    async for row in rows:
        yield (b"" if first else b",") + orjson.dumps(row)
        first = False
    yield b"]"


async def as_markdown(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    current = None
    async for row in rows:
        out = []
        if row["conversation_id"] != current:
            current = row["conversation_id"]
            out.append(f"# {row['conversation_title']}\n\n<!-- conversation {current} -->\n\n")
        who = row["role"] + (f" ({row['model']})" if row["model"] else "")
        out.append(f"**{who}** · {row['time']}\n\n{row['text']}\n\n")
        yield "".join(out).encode()


async def as_xlsx(rows: AsyncIterator[dict[str, Any]]) -> bytes:
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    book = Workbook(write_only=True)
    sheet = book.create_sheet("messages")
    sheet.append(COLUMNS)

    def cell(name: str, value: Any) -> Any:
        if name == "parameters":
            value = orjson.dumps(value).decode()
        if isinstance(value, str):
            value = ILLEGAL_CHARACTERS_RE.sub("", value)[:XLSX_CELL_MAX]
        return value

    async for row in rows:
        sheet.append([cell(c, row[c]) for c in COLUMNS])

    def save() -> bytes:
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()

    return await asyncio.to_thread(save)
