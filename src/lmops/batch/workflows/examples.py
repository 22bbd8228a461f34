"""The seed paper's catalogue tasks as workflows: copywriting, attribute labelling (JSON schema), keywords,
with a brand guardrail. Their LLM steps use the job's default model unless a tenant registers its own.

Job params: ``guidelines`` = {"banned_words": [...], "max_chars": N, "tone": "..."} (the tenant's brand rules).
"""

from __future__ import annotations

import re
from typing import Any

from lmops.batch.workflows.registry import WorkflowRegistry
from lmops.batch.workflows.steps import GuardrailStep, LLMStep, Prompt, PythonStep
from lmops.batch.workflows.workflow import Workflow

PRODUCT = ("Product: {{ record.title }}\nCategory: {{ record.category }}\nBrand: {{ record.brand }}\n"
           "Details: {{ record.description }}")

ATTRIBUTES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "colour": {"type": "string"},
        "style": {"type": "string"},
        "material": {"type": "string"},
    },
    "required": ["colour", "style", "material"],
}


def brand_rule(output: Any, guidelines: dict[str, Any], record: dict[str, Any]) -> str | None:
    """A rule guardrail: banned words and a length limit from the tenant's guidelines."""
    text = output if isinstance(output, str) else str(output)
    lowered = text.lower()
    for word in guidelines.get("banned_words", ()):
        if re.search(rf"\b{re.escape(word.lower())}\b", lowered):
            return f"uses the banned word '{word}'"
    limit = guidelines.get("max_chars")
    if limit and len(text) > int(limit):
        return f"is {len(text)} characters long; the limit is {limit}"
    return None


def normalise(record: dict[str, Any], outputs: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Pre-processing: trim fields and fill the ones a prompt needs."""
    return {k: (v.strip() if isinstance(v, str) else v) for k, v in record.items()}


def split_keywords(text: str) -> list[str]:
    words = re.split(r"[,\n;]+", text)
    seen: dict[str, None] = {}
    for w in words:
        w = re.sub(r"^[\s\-\*\d\.]+", "", w).strip().strip('"').lower()
        if w and len(w) <= 60:
            seen.setdefault(w, None)
    return list(seen)[:15]


COPYWRITING = Workflow(
    "copywriting",
    (
        LLMStep("title", prompt=Prompt("title-v1", system="You write concise e-commerce product titles.",
                                       user=PRODUCT + "\n\nWrite one product title of at most 12 words."
                                       "{% if feedback %} Avoid this problem: {{ feedback }}{% endif %}"),
                params={"max_tokens": 32, "temperature": 0}),
        LLMStep("description", prompt=Prompt(
            "description-v1", system="You write persuasive, factual e-commerce product descriptions.",
            user=PRODUCT + "\n\nWrite a two-sentence product description."
            "{% set tone = params.get('guidelines', {}).get('tone') %}{% if tone %} Tone: {{ tone }}.{% endif %}"
            "{% if feedback %} Avoid this problem: {{ feedback }}{% endif %}"),
            params={"max_tokens": 96, "temperature": 0}),
        GuardrailStep("brand_check", target="description", rule=brand_rule, policy="retry", max_retries=1),
    ),
    description="Product title and description, checked against the brand guidelines.",
)

ATTRIBUTES = Workflow(
    "attributes",
    (
        PythonStep("clean", fn=normalise),
        LLMStep("attributes", after=("clean",), schema=ATTRIBUTES_SCHEMA, max_reasks=2, prompt=Prompt(
            "attributes-v1", system="You label products. Answer with JSON only.",
            user="Product: {{ clean.title }}\nDetails: {{ clean.description }}\n\n"
                 'Give the product\'s colour, style and material as JSON: '
                 '{"colour": "...", "style": "...", "material": "..."}'),
            params={"max_tokens": 64, "temperature": 0}),
    ),
    description="Colour, style and material as JSON validated against a schema (bounded re-ask).",
)

KEYWORDS = Workflow(
    "keywords",
    (
        LLMStep("keywords", parse=split_keywords, prompt=Prompt(
            "keywords-v1", system="You write search keywords for online shops.",
            user=PRODUCT + "\n\nList 5 search keywords, separated by commas."),
            params={"max_tokens": 48, "temperature": 0}),
        GuardrailStep("brand_check", target="keywords", rule=brand_rule, policy="drop"),
    ),
    description="Search keywords; keywords breaking the brand rules are dropped.",
)

CATALOGUE = Workflow(
    "catalogue",
    COPYWRITING.steps + ATTRIBUTES.steps + (
        LLMStep("keywords", parse=split_keywords, prompt=KEYWORDS.steps[0].prompt,  # type: ignore[attr-defined]
                params={"max_tokens": 48, "temperature": 0}),
    ),
    description="Everything at once: copywriting, attributes and keywords (independent steps run concurrently).",
)


def register(registry: WorkflowRegistry) -> None:
    for wf in (COPYWRITING, ATTRIBUTES, KEYWORDS, CATALOGUE):
        registry.register(wf)
