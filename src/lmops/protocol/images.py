"""/v1/images/generations request schema (OpenAI images API)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

MAX_IMAGES = 10  # OpenAI's limit on n


class ImageGenerationRequest(BaseModel):
    """What lmops reads of an image request; other fields (quality, style, background, output_format...) go to the
    backend as they are."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1, max_length=32000)
    n: int | None = Field(None, ge=1, le=MAX_IMAGES)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    stream: StrictBool | None = None

    @field_validator("stream")
    @classmethod
    def _not_streamed(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("streamed image generation is not supported; leave stream out or false")
        return v

    def count(self) -> int:
        return self.n or 1

    def to_wire(self) -> dict[str, Any]:
        """The request as the backend should see it (lmops asks for base64 whatever the client wants back)."""
        body = self.model_dump(exclude_none=True, exclude_unset=True)
        body.pop("stream", None)
        body["response_format"] = "b64_json"
        return body
