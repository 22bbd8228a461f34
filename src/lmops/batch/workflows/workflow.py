"""A workflow: named steps forming a DAG over one record, run level by level (independent steps concurrently)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from lmops.batch.workflows.definition import digest
from lmops.batch.workflows.steps import Step, StepFailed, StepOutput

if TYPE_CHECKING:
    from lmops.batch.calls import Caller


@dataclass(frozen=True)
class Workflow:
    name: str
    steps: tuple[Step, ...]
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # defaults for the job's params

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"workflow {self.name!r}: step names must be unique")
        for s in self.steps:
            for dep in s.dependencies():
                if dep not in names:
                    raise ValueError(f"workflow {self.name!r}: step {s.name!r} depends on unknown step {dep!r}")
        object.__setattr__(self, "levels", _levels(self.name, self.steps))

    levels: tuple[tuple[Step, ...], ...] = field(default=(), init=False, compare=False)

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @cached_property
    def step_hashes(self) -> dict[str, str]:
        """Each step's definition hash (what a result records as ``step_hash``)."""
        return {s.name: digest(s) for s in self.steps}

    def version(self, params: dict[str, Any] | None = None) -> str:
        """The hash of this definition with the default ``params`` it is registered with (a job's
        ``workflow_hash``): its steps, in order, and the defaults; not its description."""
        return digest({"steps": [self.step_hashes[s.name] for s in self.steps],
                       "params": self.params if params is None else params})


def _levels(name: str, steps: tuple[Step, ...]) -> tuple[tuple[Step, ...], ...]:
    done: set[str] = set()
    left = list(steps)
    levels: list[tuple[Step, ...]] = []
    while left:
        ready = tuple(s for s in left if set(s.dependencies()) <= done)
        if not ready:
            raise ValueError(f"workflow {name!r}: steps {[s.name for s in left]} form a cycle")
        levels.append(ready)
        done.update(s.name for s in ready)
        left = [s for s in left if s.name not in done]
    return tuple(levels)


@dataclass
class StepContext:
    """What a step sees: the record, earlier outputs, the job's params; and where it writes results."""

    workflow: Workflow
    record: Any
    params: dict[str, Any]
    team_id: str
    caller: "Caller"
    default_model: str | None
    seed: int | None = None
    results: dict[str, StepOutput] = field(default_factory=dict)

    @property
    def outputs(self) -> dict[str, Any]:
        return {k: v.output for k, v in self.results.items()}

    def variables(self, **extra: Any) -> dict[str, Any]:
        return {"record": self.record, "params": self.params, **self.outputs, **extra}

    def inputs_of(self, step: Step) -> dict[str, Any]:
        deps = step.dependencies()
        return {"record": self.record, **{d: self.results[d].output for d in deps if d in self.results}}

    def replace_result(self, name: str, result: StepOutput) -> None:
        self.results[name] = result

    def mark(self, name: str, status: str) -> None:
        if name in self.results:
            self.results[name].status = status


class ItemFailed(Exception):
    """The item could not finish: ``results`` holds what its steps produced (the failing one included)."""

    def __init__(self, failure: StepFailed, step: str, results: dict[str, StepOutput]):
        super().__init__(failure.message)
        self.failure, self.step, self.results = failure, step, results


async def run_workflow(ctx: StepContext,
                       checkpoint: Callable[[list[str]], Awaitable[Any]] | None = None) -> dict[str, StepOutput]:
    """Run every step of ``ctx.workflow`` over ``ctx.record``; raise ItemFailed on the first failing step.

    Steps already in ``ctx.results`` (kept by an earlier try) are not run again; ``checkpoint(names)``
    is awaited after every level but the last with the steps that level just finished.
    """
    levels = ctx.workflow.levels
    for i, level in enumerate(levels):
        todo = [s for s in level if s.name not in ctx.results]
        if len(todo) == 1:
            await _run_step(ctx, todo[0])
        elif todo:
            outcomes = await asyncio.gather(*(_run_step(ctx, s) for s in todo), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        if checkpoint is not None and todo and i < len(levels) - 1:
            await checkpoint([s.name for s in todo])
    return ctx.results


async def _run_step(ctx: StepContext, step: Step) -> None:
    try:
        ctx.results[step.name] = await step.run(ctx)
    except StepFailed as exc:
        spent = exc.spent or StepOutput(None, inputs=ctx.inputs_of(step))
        spent.output, spent.status = exc.output, "error"
        ctx.results[step.name] = spent
        raise ItemFailed(exc, step.name, ctx.results) from None
