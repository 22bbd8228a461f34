"""An engine that answers at once, in process (no HTTP): benchmarks of the control plane use it."""

from __future__ import annotations

from lmops.engines.base import Body, Engine
from lmops.routing.replicas import Replica
from lmops.routing.router import Router

ANSWER = {"id": "cmpl-instant", "object": "chat.completion", "created": 0, "model": "instant",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "A fine title"},
                       "finish_reason": "stop", "logprobs": None}],
          "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}


class InstantEngine(Engine):
    kind = "instant"
    endpoint = "instant"

    async def health(self) -> bool:
        return True

    async def chat_completion(self, body: Body) -> Body:
        return dict(ANSWER)


def use_instant_engines(router: Router) -> None:
    """Replace every replica of every model of ``router`` by one InstantEngine."""
    for dep in router.deployments:
        dep.replicas[:] = [Replica(InstantEngine())]
