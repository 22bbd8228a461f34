"""/v1/completions request schema."""

from __future__ import annotations

from pydantic import Field, field_validator

from lmops.protocol.sampling import ResponseFormat, SamplingParams


class CompletionRequest(SamplingParams):
    prompt: str | list[str] = Field(...)
    echo: bool = False
    suffix: str | None = None
    response_format: ResponseFormat | None = None
    logprobs: int | None = Field(None, ge=0, le=20, description="how many most likely tokens to list at each "
                                                                  "position, beside the chosen one")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("lmops serves one prompt per request; send a list of exactly one string")
        return v

    def prompt_text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt

    def token_limit(self) -> int | None:
        return self.max_tokens
