"""Send a request for a public model to one of its replicas, retrying elsewhere before the first byte.

A failure is retried on another healthy replica while nothing has reached the client:
for a plain call, any retryable engine error; for a stream, an error before its first chunk.
A request whose connection broke after it was handed over (``EngineConnectionLost``) is not retryable:
the replica may be generating its answer, and it is sent again nowhere.
Each failure counts against the replica's breaker (passive checks; never enough to take out a model's last
replica, see replicas.py); after its cooldown, one request or health check (health.HealthChecker) is the
half-open probe that brings it back or keeps it out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lmops.config import AdapterConfig, HealthConfig, ModelConfig
from lmops.engines.base import (
    Body,
    Chunks,
    Engine,
    EngineBusy,
    EngineConnectionLost,
    EngineError,
    EngineRejected,
    EngineTimeout,
    Unsupported,
)
from lmops.protocol.errors import (
    APIError,
    InvalidRequest,
    ModelNotFound,
    NoHealthyReplica,
    Overloaded,
    UpstreamError,
    UpstreamTimeout,
)
from lmops.routing.replicas import Deployment, Replica

CallOp = Callable[[Engine, Body], Awaitable[Body]]
StreamOp = Callable[[Engine, Body], AsyncIterator[Chunks]]


@dataclass
class Routed:
    """Where a request went: filled in by the router, read by request records and metrics."""

    replica: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class Target:
    """What a public model name resolves to: the deployment that serves it and, for ``"<model>:<adapter>"``,
    the LoRA adapter; the request goes to the deployment's replicas under ``upstream_name``."""

    deployment: Deployment
    adapter: AdapterConfig | None = None

    @property
    def name(self) -> str:
        """The public name: ``model`` or ``model:adapter``."""
        base = self.deployment.name
        return f"{base}:{self.adapter.name}" if self.adapter is not None else base

    @property
    def config(self) -> ModelConfig:
        return self.deployment.config

    @property
    def upstream_name(self) -> str:
        return self.adapter.upstream_name if self.adapter is not None else self.deployment.config.upstream_name


class Router:
    def __init__(self, deployments: list[Deployment], health: HealthConfig):
        self._deployments = {d.name: d for d in deployments}
        # Every public name, adapters included, resolved once: no string splitting per request.
        # (Settings refuse an adapter whose public name is also a model's; the model would win.)
        self._targets: dict[str, Target] = {}
        for d in deployments:
            self._targets[d.name] = Target(d)
            for adapter in d.config.adapters:
                name = f"{d.name}:{adapter.name}"
                if name not in self._deployments:
                    self._targets[name] = Target(d, adapter)
        self._health = health

    @property
    def deployments(self) -> list[Deployment]:
        return list(self._deployments.values())

    @property
    def targets(self) -> list[Target]:
        """Every public name: each model, then its adapters."""
        return list(self._targets.values())

    def find(self, model: str) -> Target | None:
        """The deployment (and adapter) serving the public name ``model``, or None."""
        return self._targets.get(model)

    def resolve(self, model: str) -> Target:
        """Like ``find``; an unknown name (or an unknown adapter of a known model) is a 404."""
        try:
            return self._targets[model]
        except KeyError:
            raise ModelNotFound(model) from None

    def deployment(self, model: str) -> Deployment:
        """The deployment serving the public name ``model`` (a model's adapters share its deployment)."""
        return self.resolve(model).deployment

    async def call(self, model: str, op: CallOp, body: Body, routed: Routed) -> Body:
        dep = self.deployment(model)
        tried: set[int] = set()
        last: EngineError | None = None
        for _ in range(dep.max_attempts()):
            replica = dep.pick(tried)
            if replica is None:
                break
            probe = replica.breaker.probing  # picked as its breaker's half-open probe
            tried.add(id(replica))
            routed.replica, routed.attempts = replica.endpoint, routed.attempts + 1
            replica.outstanding += 1
            try:
                result = await op(replica.engine, body)
            except EngineError as exc:
                self._failed(dep, replica, exc, probe)
                if not exc.retryable:
                    raise to_api_error(exc) from exc
                last = exc
                continue
            except BaseException:
                if probe:
                    replica.breaker.release()
                raise
            finally:
                replica.outstanding -= 1
            dep.succeeded(replica)
            return result
        raise _exhausted(dep, last)

    async def stream(self, model: str, op: StreamOp, body: Body, routed: Routed) -> AsyncIterator[Chunks]:
        """Open a stream; errors before its first chunks are retried, later ones end the stream."""
        dep = self.deployment(model)
        tried: set[int] = set()
        last: EngineError | None = None
        for _ in range(dep.max_attempts()):
            replica = dep.pick(tried)
            if replica is None:
                break
            probe = replica.breaker.probing  # picked as its breaker's half-open probe
            tried.add(id(replica))
            routed.replica, routed.attempts = replica.endpoint, routed.attempts + 1
            replica.outstanding += 1
            agen = op(replica.engine, body)
            try:
                first = await agen.__anext__()
            except StopAsyncIteration:
                replica.outstanding -= 1
                dep.succeeded(replica)
                return _empty()
            except EngineError as exc:
                replica.outstanding -= 1
                self._failed(dep, replica, exc, probe)
                await _aclose(agen)
                if not exc.retryable:
                    raise to_api_error(exc) from exc
                last = exc
                continue
            except BaseException:
                replica.outstanding -= 1
                if probe:
                    replica.breaker.release()
                await _aclose(agen)
                raise
            if probe:  # a first chunk is an answer: the probe passed
                dep.succeeded(replica)
            return self._relay(dep, replica, first, agen)
        raise _exhausted(dep, last)

    async def _relay(self, dep: Deployment, replica: Replica, first: Chunks,
                     agen: AsyncIterator[Chunks]) -> AsyncIterator[Chunks]:
        ended = False
        try:
            yield first
            async for chunk in agen:
                yield chunk
            ended = True
        except EngineError as exc:
            self._failed(dep, replica, exc, False)
            raise to_api_error(exc) from exc
        else:
            dep.succeeded(replica)
        finally:
            replica.outstanding -= 1
            if not ended:  # a stream that ran to its end has nothing left to close
                await _aclose(agen)

    def _failed(self, dep: Deployment, replica: Replica, exc: EngineError, probe: bool) -> None:
        if exc.retryable or isinstance(exc, EngineConnectionLost):  # a broken connection is the replica's fault too
            dep.failed(replica, self._health, probe)
        elif probe:  # a refusal of this request (4xx) says nothing of the replica's health
            replica.breaker.release()


async def _empty() -> AsyncIterator[Chunks]:
    return
    yield  # pragma: no cover


async def _aclose(agen: Any) -> None:
    close = getattr(agen, "aclose", None)
    if close is not None:
        try:
            await asyncio.shield(close())
        except Exception:  # noqa: BLE001 - closing a broken stream must not mask the real error
            pass


def _exhausted(dep: Deployment, last: EngineError | None) -> APIError:
    if last is None:
        return NoHealthyReplica(f"No healthy replica is available for model '{dep.name}'.")
    return to_api_error(last)


def to_api_error(exc: EngineError) -> APIError:
    if isinstance(exc, EngineBusy):
        return Overloaded(exc.message, retry_after=exc.retry_after)
    if isinstance(exc, EngineTimeout):
        return UpstreamTimeout(f"The upstream engine did not answer in time: {exc.message}")
    if isinstance(exc, Unsupported):
        return InvalidRequest(exc.message, param="model", code="unsupported_model_capability")
    if isinstance(exc, EngineRejected):
        err = InvalidRequest(f"The model's engine rejected the request: {exc.message}")  # upstream or in-process
        err.status_code = exc.status if 400 <= exc.status < 500 else 400
        return err
    return UpstreamError(f"The upstream engine failed: {exc.message}")
