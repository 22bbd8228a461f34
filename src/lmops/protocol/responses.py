"""Builders for OpenAI response objects (plain dicts: they go straight to orjson)."""

from __future__ import annotations

import time
from typing import Any

from lmops.ids import new_id


def response_id(kind: str) -> str:
    """``chatcmpl-...`` / ``cmpl-...``: OpenAI's id prefixes on lmops's one id scheme (``lmops.ids``)."""
    return new_id(f"{kind}-")


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_choice(index: int, text: str, finish: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
            "logprobs": logprobs}


def tool_call_choice(index: int, call: dict[str, Any], logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
            "finish_reason": "tool_calls", "logprobs": logprobs}


def text_choice(index: int, text: str, finish: str, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}


def chat_completion(rid: str, model: str, choices: list[dict[str, Any]], prompt_toks: int,
                    out_toks: int) -> dict[str, Any]:
    """A chat completion of ``chat_choice`` choices; ``out_toks`` counts the tokens of all of them."""
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_toks, out_toks)}


def chat_chunk(rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None,
               logprobs: dict[str, Any] | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}],
    }


def text_completion(rid: str, model: str, choices: list[dict[str, Any]], prompt_toks: int,
                    out_toks: int) -> dict[str, Any]:
    """A text completion of ``text_choice`` choices; ``out_toks`` counts the tokens of all of them."""
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_toks, out_toks)}


def text_chunk(rid: str, created: int, model: str, text: str, finish: str | None,
               logprobs: dict[str, Any] | None = None, index: int = 0) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}],
    }


def usage_chunk(rid: str, created: int, model: str, obj: str, prompt_toks: int, out_toks: int) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(prompt_toks, out_toks)}


def embeddings(model: str, vectors: list[Any], prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_card(name: str, owned_by: str = "lmops", created: int = 0, *, parent: str | None = None,
               root: str | None = None) -> dict[str, Any]:
    """A model object; a LoRA adapter's card names its base model (``parent``) and upstream name (``root``),
    as vLLM's do."""
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": owned_by}
    if parent is not None:
        card["parent"] = parent
        card["root"] = root
    return card
