"""The uniform engine spec (YAML or JSON) that ``lmops engine launch`` translates into one engine's flags.

Every knob means one thing here, whatever the engine calls it: ``context_length`` is the most tokens (prompt and
answer) of one sequence, ``max_sequences`` how many sequences are decoded at once, ``gpu_memory`` the share of each
GPU's whole memory the engine may use (weights, KV cache and the rest), as vLLM's --gpu-memory-utilization means it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmops.config import ConfigError, ConfigProblem, config_problem

EngineName = Literal["vllm", "lmdeploy", "tgi", "llamacpp-server", "llama-cpp-python"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSpec(_Strict):
    """LoRA serving. ``adapters`` are loaded at start (name -> path or hub id); vLLM can also load more later."""

    enabled: bool = False
    max_adapters: int = Field(default=1, ge=1, description="adapters in one batch at once (vLLM --max-loras)")
    max_rank: int = Field(default=16, ge=1, description="the largest adapter rank served")
    adapters: dict[str, str] = Field(default_factory=dict, description="name -> adapter path (or hub id)")

    @model_validator(mode="after")
    def _adapters_need_lora(self) -> "LoraSpec":
        if self.adapters and not self.enabled:
            raise ValueError("adapters are listed but LoRA is off: set lora.enabled: true")
        for name in self.adapters:
            if not name or ":" in name or "=" in name or "," in name:
                raise ValueError(f"adapter name {name!r} cannot be empty or hold ':', '=' or ','")
        return self


class EngineSpec(_Strict):
    """One engine to launch, in terms every engine shares."""

    engine: EngineName
    model: str = Field(min_length=1, description="model path or hub id; lmops downloads nothing, the engine may")
    served_name: str | None = Field(default=None, min_length=1, description="the model name clients ask for "
                                     "(default: the engine's own choice, usually the model path)")
    context_length: int = Field(ge=16, description="most tokens of one sequence, prompt and answer together")
    max_sequences: int = Field(ge=1, description="sequences decoded at once")
    gpu_memory: float | None = Field(default=None, gt=0, le=1, description="share of each GPU's whole memory the "
                                     "engine may use (weights + KV cache); default: the engine's own")
    lora: LoraSpec = Field(default_factory=LoraSpec)
    tensor_parallel: int = Field(default=1, ge=1, description="GPUs one copy of the model is split over")
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    executable: str | None = Field(default=None, min_length=1, description="the engine program (default: its "
                                   "usual name on PATH; the running Python for llama-cpp-python)")
    extra_args: list[str] = Field(default_factory=list, description="appended to the command line as they are")
    env: dict[str, str] = Field(default_factory=dict, description="set in the engine's environment")

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"environment variable name {name!r} cannot be empty or hold '=' or NUL")
        return v

    @property
    def base_url(self) -> str:
        """Where the engine answers, as a client on this host reaches it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


class SpecError(ConfigError):
    """A spec that cannot be read or launched: every problem, with where it is."""


def load_spec(path: str | Path) -> EngineSpec:
    """Read and validate a spec file (YAML, of which JSON is a subset); SpecError lists every problem."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(source, [ConfigProblem("file", exc.strerror or str(exc))]) from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(source, [ConfigProblem("yaml", str(getattr(exc, "problem", exc)),
                                               mark.line + 1 if mark else None,
                                               mark.column + 1 if mark else None)]) from None
    if not isinstance(data, dict):
        raise SpecError(source, [ConfigProblem("top level", "must be a mapping (engine: ..., model: ..., ...)")])
    try:
        return EngineSpec(**data)
    except ValidationError as exc:
        raise SpecError(source, [config_problem(err, node) for err in exc.errors()]) from None
