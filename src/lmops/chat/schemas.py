"""Request bodies of the chat API (pydantic; unknown fields are refused with a 400 naming them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatParams(_Body):
    """Sampling parameters of a conversation. ``repetition_penalty`` is not OpenAI's: it is sent as an extra body
    field, which vLLM and llama.cpp's server read (an upstream that does not know it may ignore or refuse it)."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)


class SignIn(_Body):
    username: str = Field(default="", max_length=200)
    password: str = Field(default="", max_length=1024)


class PasswordSet(_Body):
    password: str = Field(min_length=8, max_length=1024)


class ConversationCreate(_Body):
    title: str | None = Field(default=None, max_length=500)
    model: str | None = Field(default=None, max_length=200)
    system_prompt: str | None = Field(default=None, max_length=100_000)
    params: ChatParams | None = None


class ConversationPatch(ConversationCreate):
    """The fields sent are set (``null`` clears one); those left out stay."""


class MessageCreate(_Body):
    content: str = Field(min_length=1, max_length=1_000_000)
    model: str | None = Field(default=None, max_length=200, description="this answer only; default the conversation's")


class MessageEdit(_Body):
    content: str = Field(min_length=1, max_length=1_000_000)


class Regenerate(_Body):
    model: str | None = Field(default=None, max_length=200)
