"""One static batch of the hf-transformers engine, generated with ``model.generate`` in a worker thread.

The batch's prompts are left-padded and decoded together until the last of them is done: a row that ends early
(its end-of-text token, a stop string, its own max_tokens, a client that left) is marked finished and only
pads along. One object is both generate's streamer and its stopping criterion: after each step it splits the
new tokens by row, decodes each row's text so far, hands each request its new text on the event loop, and
tells generate which rows are finished. Imports torch and transformers: load it only once they are there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from lmops.engines.text_stops import StopMatcher


@dataclass
class Row:
    """One request's generation: what the event loop hands the worker, and the events it gets back.

    Events, put on ``events`` on the loop's thread: ("text", str) pieces of the answer, then ("end", (finish,
    tokens)) or ("error", exception)."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set on the loop when the client leaves: the worker stops the row at its next step

    def emit(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class _RowState:
    def __init__(self, row: Row, tokenizer: Any, eos: set[int]):
        self.row = row
        self.tokenizer = tokenizer
        self.eos = eos
        self.tokens: list[int] = []
        self.sent = 0  # characters of the decoded text already handed on (to the stop matcher)
        self.matcher = StopMatcher(row.stops)
        self.finish: str | None = None

    def add(self, token: int) -> None:
        if token in self.eos:
            self.finish = "stop"
            return
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        complete = text[: len(text) - 1] if text.endswith("\ufffd") else text  # a character still unfinished
        if len(complete) > self.sent:
            out = self.matcher.feed(complete[self.sent:])
            self.sent = len(complete)
            if out:
                self.row.emit("text", out)
            if self.matcher.stopped:
                self.finish = "stop"
                return
        if len(self.tokens) >= self.row.max_tokens:
            self.finish = "length"

    def end(self) -> tuple[str, int]:
        """Hand on what the stop matcher still holds and say how the row ended (a character cut by max_tokens
        is left out, not sent as U+FFFD): its finish reason and tokens."""
        if not self.matcher.stopped:
            rest = self.matcher.flush()
            if rest:
                self.row.emit("text", rest)
        outcome = (self.finish or ("cancelled" if self.row.cancelled else "length"), len(self.tokens))
        self.row.emit("end", outcome)
        return outcome


class _Tracker(BaseStreamer, StoppingCriteria):  # type: ignore[misc]
    """generate's streamer (the new tokens of each step) and stopping criterion (which rows are finished)."""

    def __init__(self, rows: list[Row], tokenizer: Any, eos: set[int]):
        self.states = [_RowState(r, tokenizer, eos) for r in rows]
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # generate's first call hands over the prompts
            self._prompt_seen = True
            return
        for state, token in zip(self.states, value.view(-1).tolist(), strict=True):
            if state.finish is None and not state.row.cancelled:
                state.add(int(token))

    def end(self) -> None:
        pass

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        done = [s.finish is not None or s.row.cancelled for s in self.states]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _RowSampling(LogitsProcessor):  # type: ignore[misc]
    """Each row's own temperature and top_p (generate takes one setting for the whole batch); a row at
    temperature 0 keeps only its most likely token, so sampling it is greedy decoding."""

    def __init__(self, rows: list[Row]):
        self.temperature = torch.tensor([[r.temperature] for r in rows], dtype=torch.float32)
        self.top_p = torch.tensor([[r.top_p] for r in rows], dtype=torch.float32)
        self.greedy = self.temperature == 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        best = scores.argmax(dim=-1, keepdim=True)
        scores = scores / self.temperature.clamp(min=1e-5)
        ordered, order = torch.sort(scores, descending=False, dim=-1)
        cut = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - self.top_p)
        cut[..., -1:] = False  # the most likely token always stays
        scores = scores.masked_fill(cut.scatter(1, order, cut), float("-inf"))
        only_best = torch.full_like(scores, float("-inf")).scatter(1, best, 0.0)
        return torch.where(self.greedy, only_best, scores)


def generate_batch(model: Any, tokenizer: Any, rows: list[Row]) -> list[tuple[str, int]]:
    """Generate ``rows`` together; every row gets its events (an error reaches every row). Returns each row's
    finish reason ("cancelled": its client left) and tokens."""
    configured = model.generation_config.eos_token_id
    eos = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])} - {None}
    tracker = _Tracker(rows, tokenizer, eos)  # type: ignore[arg-type]
    try:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(r.prompt) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows])
        sample = any(r.temperature > 0 for r in rows)
        with torch.inference_mode():
            model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max(r.max_tokens for r in rows),
                do_sample=sample, temperature=1.0 if sample else None, top_p=1.0 if sample else None,
                top_k=None, pad_token_id=pad, streamer=tracker,
                stopping_criteria=StoppingCriteriaList([tracker]),
                logits_processor=LogitsProcessorList([_RowSampling(rows)] if sample else []))
    except Exception as exc:  # noqa: BLE001 - the rows' requests report it
        for state in tracker.states:
            state.row.emit("error", exc)
        return [("error", len(state.tokens)) for state in tracker.states]
    return [state.end() for state in tracker.states]
