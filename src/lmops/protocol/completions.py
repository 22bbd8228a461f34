"""/v1/completions request schema."""

from __future__ import annotations

from typing import Any

from pydantic import Field, NonNegativeInt, field_validator, model_validator

from lmops.protocol.sampling import ResponseFormat, SamplingParams

Prompt = str | list[int]  # text, or the model's token ids


def prompts_of(prompt: Any) -> list[Prompt]:
    """A completion's prompts: a string or a list of token ids is one prompt, a list of either is several."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return prompt
    return [prompt]


def choices_in(body: dict[str, Any]) -> int:
    """The choices a chat or completion request body (wire format) generates: ``n``, or ``best_of`` when more,
    for each prompt (a chat has one); what ``CompletionRequest.choices`` counts, for a body not parsed again."""
    n = body.get("n") or 1
    best_of = body.get("best_of")
    per_prompt = max(n, best_of) if type(best_of) is int else n
    return per_prompt * (len(prompts_of(body["prompt"])) if "prompt" in body else 1)


class CompletionRequest(SamplingParams):
    prompt: str | list[str] | list[NonNegativeInt] | list[list[NonNegativeInt]] = Field(
        ..., description="a prompt (text, or token ids), or a list of prompts: n choices for each, in order")
    echo: bool = False
    suffix: str | None = None
    response_format: ResponseFormat | None = None
    logprobs: int | None = Field(None, ge=0, le=20, description="how many most likely tokens to list at each "
                                                                  "position, beside the chosen one")
    max_tokens: int | None = Field(None, ge=0, description="0 (with echo) scores the prompt and generates nothing")

    @model_validator(mode="after")
    def _nothing_asked(self) -> "CompletionRequest":
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 generates nothing: it is only useful with echo (to score the prompt, "
                             "with logprobs)")
        return self

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, v: Any) -> Any:
        """One clear message for a prompt of the wrong shape (the union's own errors name every member)."""
        if isinstance(v, list) and not v:
            raise ValueError("an empty list of prompts asks for nothing; send at least one")
        prompts = prompts_of(v)
        if all(isinstance(p, str) for p in prompts):
            return v
        for p in prompts:
            if not isinstance(p, list):
                raise ValueError("a prompt is a string or a list of token ids, and a list of prompts holds one kind")
            if not p:
                raise ValueError("a prompt of token ids holds none; send at least one token")
            if not all(type(t) is int and t >= 0 for t in p):
                raise ValueError("token ids are whole numbers from 0")
        return v

    def choices(self) -> int:
        """Choices generated: ``n``, or ``best_of`` candidates (passed upstream as sent) when more, per prompt."""
        best_of = (self.model_extra or {}).get("best_of")
        per_prompt = max(self.n, best_of) if type(best_of) is int else self.n
        return per_prompt * len(prompts_of(self.prompt))

    def token_limit(self) -> int | None:
        return self.max_tokens
