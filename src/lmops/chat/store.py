"""Database queries of conversations and their messages; every query is scoped to the owner.

Paging is index-backed: conversations by (user_id, updated_at) with a keyset cursor, messages by
(conversation_id, seq), so a page costs the same in a conversation of ten messages or of a million.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, and_, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from lmops.chat.accounts import utc
from lmops.chat.tables import Conversation, Message, Summary
from lmops.ids import new_id
from lmops.protocol.errors import InvalidRequest, NotFound

Row = dict[str, Any]
CONVERSATION_FIELDS = ("title", "model", "system_prompt", "params")


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class NewMessage:
    role: str
    content: str
    model: str | None = None
    params: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: str = "complete"
    created_at: datetime | None = None


def _conversation(row: Any) -> Row:
    return {"id": row.id, "object": "chat.conversation", "title": row.title, "model": row.model,
            "system_prompt": row.system_prompt, "params": row.params or {},
            "created_at": int(utc(row.created_at).timestamp()), "updated_at": int(utc(row.updated_at).timestamp())}


def message_dict(row: Any) -> Row:
    return {"id": row.id, "object": "chat.message", "conversation_id": row.conversation_id, "seq": row.seq,
            "role": row.role, "content": row.content, "model": row.model, "params": row.params or {},
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens, "status": row.status,
            "created_at": int(utc(row.created_at).timestamp())}


def _cursor(row: Any) -> str:
    text = f"{utc(row.updated_at).isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, ident = text.split("|", 1)
        return utc(datetime.fromisoformat(at)), ident
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("Invalid cursor: pass the next_cursor of a previous page.", param="cursor") from None


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def page_query(conversation_id: str, before: int | None, limit: int, after: int | None = None) -> Select[Any]:
    """The latest ``limit`` messages (before seq ``before``, after seq ``after``), newest first: a range of the
    (conversation_id, seq) index, read backwards."""
    query = select(Message.__table__).where(Message.conversation_id == conversation_id)
    if before is not None:
        query = query.where(Message.seq < before)
    if after is not None:
        query = query.where(Message.seq > after)
    return query.order_by(Message.seq.desc()).limit(limit)


def summary_dict(row: Any) -> Row:
    return {"object": "chat.summary", "through_seq": row.through_seq, "content": row.content, "model": row.model,
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "created_at": int(utc(row.created_at).timestamp())}


class ChatStore:
    def __init__(self, db: AsyncEngine):
        self.db = db

    # -- conversations -------------------------------------------------------------------------
    async def create(self, owner: str, team_id: str, fields: Row, created_at: datetime | None = None) -> Row:
        at = created_at or now()
        ident = new_id("conv_")
        row = {"id": ident, "user_id": owner, "team_id": team_id, "title": fields.get("title") or "New chat",
               "model": fields.get("model"), "system_prompt": fields.get("system_prompt"),
               "params": fields.get("params") or {}, "created_at": at, "updated_at": at}
        async with self.db.begin() as conn:
            await conn.execute(insert(Conversation).values(**row))
        return await self.get(owner, ident)

    async def get(self, owner: str, conversation_id: str) -> Row:
        """The owner's conversation; another user's, or none, is a 404 alike."""
        async with self.db.connect() as conn:
            row = (await conn.execute(select(Conversation.__table__).where(
                Conversation.id == conversation_id, Conversation.user_id == owner))).first()
        if row is None:
            raise NotFound(f"No conversation '{conversation_id}'.", param="conversation_id")
        return _conversation(row)

    async def conversations(self, owner: str, *, limit: int, cursor: str | None = None, q: str | None = None) -> Row:
        c = Conversation.__table__
        query = select(c).where(c.c.user_id == owner)
        if cursor:
            at, ident = _parse_cursor(cursor)
            query = query.where(or_(c.c.updated_at < at, and_(c.c.updated_at == at, c.c.id < ident)))
        if q:
            pattern = _like(q)
            m = Message.__table__
            query = query.where(or_(c.c.title.ilike(pattern, escape="\\"),
                                    exists().where(m.c.conversation_id == c.c.id,
                                                   m.c.content.ilike(pattern, escape="\\"))))
        query = query.order_by(c.c.updated_at.desc(), c.c.id.desc()).limit(limit + 1)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return {"object": "list", "data": [_conversation(r) for r in rows], "has_more": more,
                "next_cursor": _cursor(rows[-1]) if more else None}

    async def update(self, owner: str, conversation_id: str, fields: Row) -> Row:
        await self.get(owner, conversation_id)
        values = {k: v for k, v in fields.items() if k in CONVERSATION_FIELDS}
        if "title" in values and not values["title"]:
            values["title"] = "New chat"
        async with self.db.begin() as conn:
            await conn.execute(update(Conversation).where(Conversation.id == conversation_id)
                               .values(**values, updated_at=now()))
        return await self.get(owner, conversation_id)

    async def delete(self, owner: str, conversation_id: str) -> None:
        await self.get(owner, conversation_id)
        async with self.db.begin() as conn:
            await conn.execute(delete(Summary).where(Summary.conversation_id == conversation_id))
            await conn.execute(delete(Message).where(Message.conversation_id == conversation_id))
            await conn.execute(delete(Conversation).where(Conversation.id == conversation_id))

    async def conversation_ids(self, owner: str) -> list[str]:
        async with self.db.connect() as conn:
            return list((await conn.scalars(select(Conversation.id).where(Conversation.user_id == owner)
                                            .order_by(Conversation.created_at, Conversation.id))).all())

    # -- messages ------------------------------------------------------------------------------
    async def page(self, conversation_id: str, *, before: int | None, limit: int) -> Row:
        """The ``limit`` messages before ``seq`` ``before`` (the latest without it), oldest first."""
        async with self.db.connect() as conn:
            rows = (await conn.execute(page_query(conversation_id, before, limit + 1))).all()
        more = len(rows) > limit
        data = [message_dict(r) for r in reversed(rows[:limit])]
        return {"object": "list", "data": data, "has_more": more,
                "next_before": data[0]["seq"] if more and data else None}

    async def latest(self, conversation_id: str, limit: int, before: int | None = None,
                     after: int | None = None) -> list[Row]:
        """Up to ``limit`` messages (between seqs ``after`` and ``before``), newest first (the history window reads
        these page by page)."""
        async with self.db.connect() as conn:
            rows = (await conn.execute(page_query(conversation_id, before, limit, after))).all()
        return [message_dict(r) for r in rows]

    async def following(self, conversation_id: str, after: int, before: int | None, limit: int) -> list[Row]:
        """Up to ``limit`` messages after seq ``after`` (and before ``before``), oldest first."""
        query = select(Message.__table__).where(Message.conversation_id == conversation_id, Message.seq > after)
        if before is not None:
            query = query.where(Message.seq < before)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query.order_by(Message.seq).limit(limit))).all()
        return [message_dict(r) for r in rows]

    # -- summaries (conversation memory) -------------------------------------------------------
    async def summary(self, conversation_id: str, before: int | None = None) -> Row | None:
        """The latest summary (of messages before seq ``before``): one read of the (conversation_id, through_seq)
        index."""
        query = select(Summary.__table__).where(Summary.conversation_id == conversation_id)
        if before is not None:
            query = query.where(Summary.through_seq < before)
        async with self.db.connect() as conn:
            row = (await conn.execute(query.order_by(Summary.through_seq.desc()).limit(1))).first()
        return summary_dict(row) if row is not None else None

    async def add_summary(self, conversation_id: str, through_seq: int, content: str, model: str,
                          prompt_tokens: int | None, completion_tokens: int | None) -> Row:
        """Store a summary of the messages up to ``through_seq``; one made meanwhile for the same seq (another
        answer's) is kept instead."""
        row = {"id": new_id("sum_"), "conversation_id": conversation_id, "through_seq": through_seq,
               "content": content, "model": model, "prompt_tokens": prompt_tokens,
               "completion_tokens": completion_tokens, "created_at": now()}
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(Summary).values(**row))
        except IntegrityError:
            found = await self.summary(conversation_id, through_seq + 1)
            if found is not None and found["through_seq"] == through_seq:
                return found
            raise
        return summary_dict(_Obj(row))

    async def message(self, conversation_id: str, message_id: str) -> Row:
        async with self.db.connect() as conn:
            row = (await conn.execute(select(Message.__table__).where(
                Message.conversation_id == conversation_id, Message.id == message_id))).first()
        if row is None:
            raise NotFound(f"No message '{message_id}' in this conversation.", param="message_id")
        return message_dict(row)

    async def add(self, conversation_id: str, messages: list[NewMessage], *, title: str | None = None) -> list[Row]:
        """Append messages (numbered after the last one) and touch the conversation (and set its ``title``), in one
        transaction."""
        stamp = now()
        async with self.db.begin() as conn:
            last = await conn.scalar(select(func.max(Message.seq)).where(Message.conversation_id == conversation_id))
            rows = []
            for i, m in enumerate(messages):
                rows.append({"id": new_id("msg_"), "conversation_id": conversation_id, "seq": (last or 0) + 1 + i,
                             "role": m.role, "content": m.content, "model": m.model, "params": m.params or {},
                             "prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens,
                             "status": m.status, "created_at": m.created_at or stamp})
            if rows:
                await conn.execute(insert(Message), rows)
            touched = {"updated_at": stamp} if title is None else {"updated_at": stamp, "title": title}
            await conn.execute(update(Conversation).where(Conversation.id == conversation_id).values(**touched))
        return [message_dict(_Obj(r)) for r in rows]

    async def truncate_after(self, conversation_id: str, seq: int) -> None:
        """Drop every message after ``seq``, and the summaries of any of them."""
        async with self.db.begin() as conn:
            await conn.execute(delete(Summary).where(Summary.conversation_id == conversation_id,
                                                     Summary.through_seq > seq))
            await conn.execute(delete(Message).where(Message.conversation_id == conversation_id, Message.seq > seq))

    async def edit(self, conversation_id: str, seq: int, content: str) -> Row:
        """Replace a message's text and drop every message after it (and the summaries of any of them), in one
        transaction."""
        async with self.db.begin() as conn:
            await conn.execute(delete(Summary).where(Summary.conversation_id == conversation_id,
                                                     Summary.through_seq >= seq))
            await conn.execute(delete(Message).where(Message.conversation_id == conversation_id, Message.seq > seq))
            await conn.execute(update(Message).where(Message.conversation_id == conversation_id, Message.seq == seq)
                               .values(content=content, created_at=now()))
            row = (await conn.execute(select(Message.__table__).where(
                Message.conversation_id == conversation_id, Message.seq == seq))).first()
        return message_dict(row)

    async def messages_of(self, conversation_id: str, page: int = 500) -> AsyncIterator[Row]:
        """Every message in order, ``page`` rows per query (exports stream through this)."""
        after = 0
        while True:
            async with self.db.connect() as conn:
                rows = (await conn.execute(select(Message.__table__).where(
                    Message.conversation_id == conversation_id, Message.seq > after)
                    .order_by(Message.seq).limit(page))).all()
            for r in rows:
                yield message_dict(r)
            if len(rows) < page:
                return
            after = rows[-1].seq


class _Obj:
    """Attribute access to a dict (a row just inserted, rendered like one read back)."""

    def __init__(self, values: Row):
        self.__dict__.update(values)
