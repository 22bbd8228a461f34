"""/v1/embeddings request schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: object) -> object:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        if isinstance(v, str) and not v:
            raise ValueError("input must not be an empty string")
        return v

    def texts(self) -> list[str]:
        if isinstance(self.input, str):
            return [self.input]
        if all(isinstance(x, str) for x in self.input):
            return list(self.input)  # type: ignore[arg-type]
        raise ValueError("token-array input is only accepted by upstream engines")

    def to_wire(self) -> dict:
        return self.model_dump(exclude_none=True, exclude_unset=True)
