"""/v1/completions request schema."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from lmops.protocol.sampling import ResponseFormat, SamplingParams


class CompletionRequest(SamplingParams):
    prompt: str | list[str] = Field(..., description="a prompt, or a list of prompts: n choices for each, in order")
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

    @field_validator("prompt")
    @classmethod
    def _some_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list of prompts asks for nothing; send at least one")
        return v

    def choices(self) -> int:
        return self.n * (len(self.prompt) if isinstance(self.prompt, list) else 1)

    def token_limit(self) -> int | None:
        return self.max_tokens
