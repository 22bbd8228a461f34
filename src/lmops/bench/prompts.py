"""What ``lmops bench`` asks: a built-in prompt set whose natural answers are short, medium and long, or a dataset.

A dataset is a JSONL file, one request a line: ``{"prompt": "..."}``, ``{"messages": [...]}`` (either may carry
``max_tokens``), or an OpenAI batch input line (``{"custom_id": ..., "body": {"messages": ...}}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, Any]


@dataclass(frozen=True)
class Prompt:
    messages: tuple[Message, ...]
    max_tokens: int | None = None  # None: the run's --max-tokens
    kind: str = "dataset"  # the built-in set's expected answer length: short, medium, long
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # other body fields a dataset line set


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file and line."""


def _user(text: str) -> tuple[Message, ...]:
    return ({"role": "user", "content": text},)


# Written for this project: questions whose natural answers are a few words, a paragraph, or a long text.
_SHORT = (
    "What is the capital of Portugal? Answer with the city name only.",
    "How many legs does a spider have? Answer with a number.",
    "Which planet is closest to the Sun? One word.",
    "What is 17 times 3? Give only the result.",
    "Name the chemical symbol for gold.",
    "Is a tomato a fruit or a vegetable, botanically? One word.",
    "What colour do you get by mixing blue and yellow paint?",
    "In which year did the first person walk on the Moon?",
)
_MEDIUM = (
    "Explain in one paragraph why the sky looks blue during the day.",
    "Describe how a hash table finds a key, in about five sentences.",
    "Give three practical tips for keeping a sourdough starter healthy, with a sentence on each.",
    "Summarise what a load balancer does for a web service, in a short paragraph.",
    "Explain the difference between a process and a thread to a new programmer, briefly.",
    "Write a short product description for a waterproof hiking backpack.",
    "Why do leaves change colour in autumn? Answer in one paragraph.",
    "What are the trade-offs of caching database query results? Keep it to a paragraph.",
)
_LONG = (
    "Write a detailed, step-by-step guide to planting and caring for a vegetable garden through a full season.",
    "Tell a long story about a lighthouse keeper who finds a message in a bottle, with several scenes.",
    "Explain in depth how the TCP protocol establishes a connection, transfers data reliably and closes it.",
    "Write a thorough essay on the history of the printing press and its effects on European society.",
    "Describe, section by section, how you would design a URL shortening service that serves a million users.",
    "Write a complete beginner's tutorial on recursion, with several worked examples and their explanations.",
    "Compare three styles of coffee brewing in detail: equipment, method, taste and common mistakes.",
    "Explain how vaccines train the immune system, covering antigens, antibodies, memory cells and boosters.",
)
BUILTIN: tuple[Prompt, ...] = (
    *(Prompt(_user(t), 32, "short") for t in _SHORT),
    *(Prompt(_user(t), 256, "medium") for t in _MEDIUM),
    *(Prompt(_user(t), 1024, "long") for t in _LONG),
)  # short, medium and long alternate when taken round-robin (see ``interleaved``)

SHARED_PREFIX = (  # multi-turn conversations open with this system prompt, so that engines can cache it
    "You are a patient assistant helping a small team plan their work. Answer precisely, reuse what was said "
    "earlier in the conversation, and keep a friendly tone. The team runs a bakery that ships bread and "
    "pastries to cafes across the city every morning; they care about freshness, delivery times and cost."
)
FOLLOW_UPS = (
    "Can you say more about that?",
    "What would you do first?",
    "Summarise your advice in two sentences.",
    "What could go wrong?",
)


def interleaved(prompts: tuple[Prompt, ...] | list[Prompt]) -> list[Prompt]:
    """The prompts ordered so that consecutive requests alternate kinds (short, medium, long, short, ...)."""
    by_kind: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_kind.setdefault(p.kind, []).append(p)
    out: list[Prompt] = []
    for i in range(max((len(v) for v in by_kind.values()), default=0)):
        out.extend(v[i] for v in by_kind.values() if i < len(v))
    return out


def load_dataset(path: str | Path) -> list[Prompt]:
    """The prompts of a JSONL dataset; DatasetError (naming the file and line) for anything unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read dataset {path}: {getattr(exc, 'strerror', None) or exc}") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompts.append(_prompt_of(json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{path}, line {number}: {exc}") from None
    if not prompts:
        raise DatasetError(f"dataset {path} holds no prompts")
    return prompts


def _prompt_of(line: Any) -> Prompt:
    if not isinstance(line, dict):
        raise ValueError("expected a JSON object")
    body = line.get("body") if "body" in line else line  # an OpenAI batch input line carries its request in body
    if not isinstance(body, dict):
        raise ValueError("body is not a JSON object")
    if isinstance(body.get("messages"), list) and body["messages"]:
        messages = tuple(body["messages"])
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise ValueError("every message needs a role")
    elif isinstance(body.get("prompt"), str) and body["prompt"]:
        messages = _user(body["prompt"])
    else:
        raise ValueError('expected "prompt" (a string) or "messages" (a list)')
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError("max_tokens must be a positive integer")
    extra = {k: v for k, v in body.items()
             if k not in {"messages", "prompt", "max_tokens", "max_completion_tokens", "model", "stream",
                          "stream_options"}}
    return Prompt(messages, limit, "dataset", extra)
