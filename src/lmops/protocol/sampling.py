"""Sampling parameters shared by chat and text completions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class SamplingParams(BaseModel):
    """Fields common to /v1/chat/completions and /v1/completions.

    Unknown fields are kept and passed upstream untouched, so engines that understand
    more of the API (vLLM's ``top_k``, ``min_p``...) still receive them.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, ge=-1, description="sample from the k most likely tokens (vLLM's; -1 or 0: all)")
    min_p: float | None = Field(None, ge=0, le=1, description="drop tokens less likely than min_p times the likeliest")
    n: int = Field(1, ge=1, le=128, description="how many choices to generate for the prompt")
    user: str | None = None
    logit_bias: dict[str, float] | None = Field(
        None, description="token id (as a string) -> bias from -100 to 100, added to the token's logit")

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (v or {}).items():
            if not (token.isascii() and token.isdigit()):
                raise ValueError(f"keys are token ids (whole numbers written as strings); got {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"a bias is between -100 and 100; token {token} has {bias}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    def choices(self) -> int:
        """How many choices the answer has (each up to the token limit)."""
        return self.n

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def to_wire(self) -> dict[str, Any]:
        """The request as a JSON-ready dict without unset fields (what goes upstream)."""
        return self.model_dump(exclude_none=True, exclude_unset=True, by_alias=True)


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None
