"""Replay: run one step of one item again, as its lineage recorded it, and compare.

An LLM step's result keeps the request it sent (rendered messages, model and adapter, every sampling param,
seed, response_format, and the JSON schema it validated against): replay sends that request again through the
same model caller the workers use, whatever the workflow says today, and compares the output with the recorded
one. The job keeps the hash of its workflow's definition when it was submitted and each result the hash of its
step's: replay says whether either changed since. With ``current=True`` it also runs the step as it is defined
now, on the same inputs, to show the three side by side.

Python steps and guardrails keep their inputs, not their code: they run with today's code on the recorded
inputs (an OpenAI batch request is its own record: it is sent again as it is). Results recorded before
requests were kept (migration 0005) run with today's definition too. Each such case is stated in ``notes``.
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from sqlalchemy import select

from lmops.batch.service import BatchService
from lmops.batch.tables import ITEMS, JOBS, RESULTS
from lmops.batch.workflows.steps import (GuardrailStep, LLMStep, PythonStep, RequestStep, Step, StepFailed, StepOutput,
                                         send)
from lmops.batch.workflows.workflow import StepContext, Workflow

NOT_RUN = ("pending", "leased")


class ReplayError(LookupError):
    """Nothing to replay (unknown item or step, an item not run yet): a message for a person."""


@dataclass
class Replay:
    item_id: int
    step: str
    workflow: str
    recorded: StepOutput  # as the result row keeps it
    replayed: StepOutput  # the recorded request sent again (``as_recorded``), else the step as defined today
    as_recorded: bool
    error: str | None = None  # why the replay failed
    current: StepOutput | None = None  # ``current=True``: the step as defined today, on the same inputs
    current_error: str | None = None
    workflow_changed: bool | None = None  # since the job was submitted; None: not known
    step_changed: bool | None = None  # since the result was recorded; None: not known
    current_step_hash: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def before(self) -> Any:
        return self.recorded.output

    @property
    def same(self) -> bool:
        return self.error is None and self.recorded.output == self.replayed.output

    @property
    def current_same(self) -> bool | None:
        if self.current is None:
            return None
        return self.current_error is None and self.recorded.output == self.current.output

    def diff(self) -> str:
        return _diff(self.recorded.output, self.replayed.output, "recorded",
                     "replayed as recorded" if self.as_recorded else "replayed (current definition)")

    def current_diff(self) -> str:
        return "" if self.current is None else _diff(self.recorded.output, self.current.output, "recorded",
                                                     "current definition")


async def replay(batch: BatchService, item_id: int, step: str, *, current: bool = False) -> Replay:
    """Re-run ``step`` of ``item_id`` as recorded; with ``current`` also as the workflow defines it now."""
    async with batch.jobs.db.connect() as conn:
        item = (await conn.execute(select(ITEMS).where(ITEMS.c.id == item_id))).first()
        if item is None:
            raise ReplayError(f"no item {item_id}")
        job = (await conn.execute(select(JOBS).where(JOBS.c.id == item.job_id))).first()
        rows = {r.step: r for r in await conn.execute(select(RESULTS).where(RESULTS.c.item_id == item_id))}
    if job is None:
        raise ReplayError(f"the job of item {item_id} ({item.job_id}) no longer exists")
    workflow, defaults = await _current_workflow(batch, job)
    defined = workflow.step_names if workflow is not None else []
    row = rows.get(step)
    if row is None:
        known = list(dict.fromkeys([*defined, *rows]))
        if step not in known:
            raise ReplayError(f"workflow {job.workflow!r} has no step {step!r}; steps: {', '.join(known) or 'none'}")
        if item.status in NOT_RUN:
            raise ReplayError(f"item {item_id} has not run yet (status {item.status}): there is nothing to replay")
        raise ReplayError(f"item {item_id} has no recorded result for step {step!r} (item status {item.status}; "
                          f"recorded steps: {', '.join(rows) or 'none'})")
    recorded = StepOutput.from_row(row)
    target = workflow.step(step) if workflow is not None and step in defined else None
    params = {**defaults, **orjson.loads(job.params or "{}")}
    default_model = params.get("model") or (batch.default_model if job.kind == "enrichment" else None)

    def context() -> StepContext:
        ctx = StepContext(workflow or Workflow(job.workflow, ()), orjson.loads(item.payload), params, job.team_id,
                          batch.caller, default_model, seed=params.get("seed"))
        for name, res in rows.items():
            if name != step:
                ctx.results[name] = StepOutput(orjson.loads(res.output) if res.output else None, status=res.status)
        _recorded_inputs(ctx, target, recorded.inputs)
        return ctx

    r = Replay(item_id, step, job.workflow, recorded, StepOutput(None), as_recorded=False)
    _versions(r, job, workflow, defaults, target)
    request = recorded.request
    if request is not None and not request.get("judge"):  # an LLM step's call: send it again as it was
        r.as_recorded = True
        parse = target.parse if isinstance(target, LLMStep) else None
        if parse is not None and r.step_changed is not False:
            r.notes.append("the answer is parsed by the step's current parse function (code is not recorded)")
        lineage = replace(recorded, output=None, status="ok", prompt_tokens=0, completion_tokens=0, latency_ms=0.0)
        r.replayed, r.error = await _run(lambda: send(context(), step, lineage, parse), lineage)
    elif target is None:
        raise ReplayError(f"step {step!r} of item {item_id} recorded no model request and workflow "
                          f"{job.workflow!r} no longer defines it: it cannot be replayed")
    else:
        r.as_recorded = isinstance(target, RequestStep)  # the item's payload is the request
        if not r.as_recorded:
            r.notes.append(_why_current(target, row))
        r.replayed, r.error = await _run(lambda: target.run(context()), StepOutput(None))
        r.replayed.step_hash = r.current_step_hash
    if current and isinstance(target, RequestStep):
        r.notes.append("an OpenAI batch request is its own definition: there is no other one to run")
    elif current and target is not None:  # (without a target, the notes say why there is nothing to run)
        if not r.as_recorded:
            r.current, r.current_error = r.replayed, r.error  # the replay was the current definition already
        else:
            r.current, r.current_error = await _run(lambda: target.run(context()), StepOutput(None))
            r.current.step_hash = r.current_step_hash
    return r


async def _current_workflow(batch: BatchService, job: Any) -> tuple[Workflow | None, dict[str, Any]]:
    """The job's workflow as registered now (not the worker's cached copy), with its default params."""
    if job.kind != "enrichment":
        info = await batch.job_info(job.id)  # an OpenAI batch: one fixed request step
        return (info.workflow if info else None), {}
    found = batch.registry.get(job.workflow, job.team_id)
    return found if found is not None else (None, {})


def _versions(r: Replay, job: Any, workflow: Workflow | None, defaults: dict[str, Any], target: Step | None) -> None:
    """Compare the recorded definition hashes with today's; say what changed."""
    if job.kind == "enrichment":
        if workflow is None:
            r.notes.append(f"workflow {job.workflow!r} is no longer registered for team {job.team_id!r}")
        elif job.workflow_hash is None:
            r.notes.append("the job was submitted before workflow versions were recorded: "
                           "whether the workflow changed since is not known")
        else:
            now = workflow.version(defaults)
            r.workflow_changed = now != job.workflow_hash
            r.notes.append(f"workflow {job.workflow!r} changed since the job was submitted "
                           f"(definition {job.workflow_hash} -> {now})" if r.workflow_changed else
                           f"workflow {job.workflow!r} is unchanged since the job was submitted ({now})")
    if target is not None and workflow is not None:
        r.current_step_hash = workflow.step_hashes[target.name]
    elif workflow is not None:
        r.notes.append(f"workflow {job.workflow!r} no longer defines step {r.step!r}")
    recorded = r.recorded.step_hash
    if recorded is not None and r.current_step_hash is not None:
        r.step_changed = recorded != r.current_step_hash
        if r.step_changed:
            r.notes.append(f"step {r.step!r} changed since this result was recorded "
                           f"(step {recorded} -> {r.current_step_hash})")


def _why_current(target: Step, row: Any) -> str:
    today = "replayed with the step as defined today"
    if row.step_hash is None and row.request is None:
        return f"this result was recorded before results kept their model request (migration 0005): {today}"
    if isinstance(target, LLMStep):
        return f"no model request was recorded (the step failed before it called the model): {today}"
    kind = {GuardrailStep: "guardrail", PythonStep: "python"}.get(type(target), type(target).__name__)
    return f"a {kind} step's code is not recorded: {today}, on the recorded inputs"


def _recorded_inputs(ctx: StepContext, target: Step | None, inputs: Any) -> None:
    """The outputs the step saw when it ran (a guardrail may have replaced one since) override the final ones."""
    if target is None or not isinstance(inputs, dict):
        return
    if isinstance(target, GuardrailStep):
        if "output" in inputs:
            status = ctx.results[target.target].status if target.target in ctx.results else "ok"
            ctx.results[target.target] = StepOutput(inputs["output"], status=status)
        return
    for dep in target.dependencies():
        if dep in inputs:
            status = ctx.results[dep].status if dep in ctx.results else "ok"
            ctx.results[dep] = StepOutput(inputs[dep], status=status)


async def _run(call: Callable[[], Awaitable[StepOutput]], lineage: StepOutput) -> tuple[StepOutput, str | None]:
    try:
        return await call(), None
    except StepFailed as exc:
        out = exc.spent or lineage
        out.output, out.status = exc.output, "error"
        return out, f"{exc.code}: {exc.message}"


def _diff(old: Any, new: Any, old_name: str, new_name: str) -> str:
    return "\n".join(difflib.unified_diff(pretty(old).splitlines(), pretty(new).splitlines(), old_name, new_name,
                                          lineterm=""))


def pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
