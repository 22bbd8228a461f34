"""The token counts an engine reports, made plausible before they are billed.

The ledger bills what the engine says it used. An engine that reports more completion tokens than the request
allowed (``max_tokens`` for each of its choices), or counts that are not counts (negative, fractional, text),
has a bug or is not honest; the request is billed what it could have used at most (0 for a count that is none),
and the discrepancy is logged with the replica and both numbers and counted in
``lmops_usage_implausible_total{model,replica,reason}``, for the operator to take up with the engine.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from lmops.observability.metrics import Metrics
from lmops.serving.context import RequestContext

log = logging.getLogger("lmops.usage")

OVER_LIMIT = "over_max_tokens"  # more completion tokens than max_tokens x choices
NOT_A_COUNT = "not_a_count"  # negative, fractional, not a number, or usage that is not an object


def plausible_usage(ctx: RequestContext, usage: Any, metrics: Metrics) -> None:
    """Set ``ctx.prompt_tokens`` and ``ctx.completion_tokens`` from an engine's ``usage`` object (None or
    missing counts: 0), each clamped to what is possible: a whole number from 0, and at most ``ctx.max_tokens``
    times ``ctx.choices`` completion tokens when the request had a limit. What was clamped is logged and counted."""
    if usage is None:
        usage = {}
    problems: list[str] = []
    reasons: set[str] = set()
    if not isinstance(usage, dict):
        problems.append(f"usage is a {type(usage).__name__}, not an object")
        reasons.add(NOT_A_COUNT)
        usage = {}
    prompt = _count(usage.get("prompt_tokens"), "prompt_tokens", problems, reasons)
    completion = _count(usage.get("completion_tokens"), "completion_tokens", problems, reasons)
    if ctx.max_tokens is not None and completion > ctx.max_tokens * ctx.choices:
        problems.append(f"completion_tokens {completion} > max_tokens {ctx.max_tokens} x {ctx.choices} choice(s)")
        reasons.add(OVER_LIMIT)
        completion = ctx.max_tokens * ctx.choices
    ctx.prompt_tokens, ctx.completion_tokens = prompt, completion
    if problems:
        _report(ctx, problems, reasons, metrics)


def _count(value: Any, name: str, problems: list[str], reasons: set[str]) -> int:
    """A token count as an int: whole numbers from 0 (17 or 17.0) as they are, None as 0, anything else 0 and
    reported."""
    if type(value) is int and value >= 0:
        return value
    if value is None:
        return 0
    if type(value) is float and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    problems.append(f"{name} {value!r} is not a token count")
    reasons.add(NOT_A_COUNT)
    return 0


def _report(ctx: RequestContext, problems: list[str], reasons: set[str], metrics: Metrics) -> None:
    model, replica = ctx.public_model or "-", ctx.replica or "-"
    log.warning("implausible usage reported by replica %s of model %s (request %s): %s; billed %d prompt and %d "
                "completion tokens", replica, model, ctx.request_id, "; ".join(problems), ctx.prompt_tokens,
                ctx.completion_tokens)
    for reason in sorted(reasons):
        metrics.usage_implausible.labels(model, replica, reason).inc()
