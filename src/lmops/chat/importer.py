"""Read conversations exported from ChatGPT or Open WebUI.

Accepted shapes (a JSON list of conversations, or one conversation object):

- ChatGPT (``conversations.json`` of "Export data"): ``{"title", "create_time", "current_node", "mapping": {id:
  {"message": {"author": {"role"}, "content": {"parts": [...]}, "create_time", "metadata": {"model_slug"}} | null,
  "parent", "children"}}}``. The branch shown last is followed from ``current_node`` up its parents (without
  it, every message in time order); text parts are joined, other parts (images, files) and tool messages skipped.
- Open WebUI (a chat's or all chats' JSON export): ``{"id", "title", "created_at", "chat": {"title", "history":
  {"currentId", "messages": {id: {"parentId", "role", "content", "timestamp", "model"}}}, "messages": [...]}}``.
  The ``history`` branch ending at ``currentId`` is taken when present, else the ``messages`` list. Times may
  be seconds or milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from lmops.chat.store import NewMessage
from lmops.protocol.errors import InvalidRequest

ROLES = ("user", "assistant", "system")


@dataclass
class Imported:
    title: str
    source: str  # chatgpt | openwebui
    created_at: datetime | None
    messages: list[NewMessage] = field(default_factory=list)


def parse_export(data: Any, max_conversations: int) -> list[Imported]:
    items = [data] if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise InvalidRequest("Expected a ChatGPT or Open WebUI export: a JSON list of conversations.")
    if len(items) > max_conversations:
        raise InvalidRequest(f"An import holds at most {max_conversations} conversations (this one {len(items)}).")
    found = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("mapping"), dict):
            found.append(_chatgpt(item))
        elif isinstance(item, dict) and (isinstance(item.get("chat"), dict) or "history" in item
                                         or isinstance(item.get("messages"), list)):
            found.append(_openwebui(item))
        else:
            raise InvalidRequest(f"Conversation {i} is neither a ChatGPT conversation (with 'mapping') nor an "
                                 "Open WebUI chat (with 'chat').", param=f"[{i}]")
    return found


def _time(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    seconds = float(value)
    while seconds > 1e11:  # milliseconds (or finer)
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _title(value: Any) -> str:
    return value[:500] if isinstance(value, str) and value.strip() else "Imported chat"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content
                         if isinstance(p, str) or (isinstance(p, dict) and isinstance(p.get("text"), str)))
    return ""


def _branch(nodes: dict[str, Any], current: Any, parent_key: str) -> list[Any] | None:
    """The nodes from the root down to ``current``, following ``parent_key``; None when ``current`` is unknown."""
    if not isinstance(current, str) or current not in nodes:
        return None
    chain, seen = [], set()
    while isinstance(current, str) and current in nodes and current not in seen:
        seen.add(current)
        node = nodes[current]
        chain.append(node)
        current = node.get(parent_key) if isinstance(node, dict) else None
    return list(reversed(chain))


def _oldest_first(value: Any) -> datetime:
    return _time(value) or datetime.min.replace(tzinfo=timezone.utc)


def _chatgpt(item: dict[str, Any]) -> Imported:
    mapping = item["mapping"]
    nodes = _branch(mapping, item.get("current_node"), "parent")
    if nodes is None:
        nodes = sorted((n for n in mapping.values() if isinstance(n, dict) and isinstance(n.get("message"), dict)),
                       key=lambda n: _oldest_first(n["message"].get("create_time")))
    conv = Imported(_title(item.get("title")), "chatgpt", _time(item.get("create_time")))
    for node in nodes:
        msg = node.get("message") if isinstance(node, dict) else None
        if not isinstance(msg, dict):
            continue
        author = msg.get("author")
        role = author.get("role") if isinstance(author, dict) else None
        content = msg.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        text = _text(parts) if isinstance(parts, list) else ""
        metadata: dict[str, Any] = msg["metadata"] if isinstance(msg.get("metadata"), dict) else {}
        if role not in ROLES or not text.strip() or metadata.get("is_visually_hidden_from_conversation"):
            continue
        model = metadata.get("model_slug")
        conv.messages.append(NewMessage(role, text, model=model[:200] if isinstance(model, str) else None,
                                        created_at=_time(msg.get("create_time"))))
    return conv


def _openwebui(item: dict[str, Any]) -> Imported:
    chat = item["chat"] if isinstance(item.get("chat"), dict) else item
    history = chat.get("history")
    stored = history.get("messages") if isinstance(history, dict) else None
    messages: list[Any] | None = None
    if isinstance(stored, dict):
        messages = _branch(stored, history.get("currentId"), "parentId")  # type: ignore[union-attr]
    if messages is None and isinstance(chat.get("messages"), list):
        messages = chat["messages"]
    if messages is None and isinstance(stored, dict):
        messages = sorted((m for m in stored.values() if isinstance(m, dict)),
                          key=lambda m: _oldest_first(m.get("timestamp")))
    conv = Imported(_title(item.get("title") or chat.get("title")), "openwebui",
                    _time(item.get("created_at")) or _time(chat.get("timestamp")))
    for m in messages or []:
        if not isinstance(m, dict):
            continue
        role, text = m.get("role"), _text(m.get("content"))
        if role not in ROLES or not text.strip():
            continue
        model = m.get("model")
        conv.messages.append(NewMessage(role, text, model=model[:200] if isinstance(model, str) else None,
                                        created_at=_time(m.get("timestamp"))))
    return conv
