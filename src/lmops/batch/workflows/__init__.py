"""Workflows: a DAG of steps (llm, guardrail, python) run over one record, registered by name and tenant."""

from lmops.batch.workflows.registry import WorkflowRegistry
from lmops.batch.workflows.steps import GuardrailStep, LLMStep, Prompt, PythonStep, RequestStep, Step
from lmops.batch.workflows.workflow import Workflow

__all__ = ["GuardrailStep", "LLMStep", "Prompt", "PythonStep", "RequestStep", "Step", "Workflow",
           "WorkflowRegistry"]
