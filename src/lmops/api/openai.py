"""The OpenAI-compatible inference routes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmops.api.deps import core, json_response, new_context, parse_tracked
from lmops.api.openapi_bodies import request_body
from lmops.protocol.chat import ChatCompletionRequest
from lmops.protocol.completions import CompletionRequest
from lmops.protocol.embeddings import EmbeddingRequest

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    svc = core(request)
    ctx = new_context(request, "chat.completions")
    req = await parse_tracked(request, ChatCompletionRequest, ctx)
    return await svc.inference.chat(req, request, ctx)


@router.post("/completions", openapi_extra=request_body(CompletionRequest))
async def completions(request: Request) -> Response:
    svc = core(request)
    ctx = new_context(request, "completions")
    req = await parse_tracked(request, CompletionRequest, ctx)
    return await svc.inference.completion(req, request, ctx)


@router.post("/embeddings", openapi_extra=request_body(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    svc = core(request)
    ctx = new_context(request, "embeddings")
    req = await parse_tracked(request, EmbeddingRequest, ctx)
    return await svc.inference.embeddings(req, request, ctx)


@router.get("/models")
async def list_models(request: Request) -> Response:
    """The models (and adapters) the caller's key may use: its team's and its own model rules; and the assistant
    when it may use both the assistant's models."""
    svc = core(request)
    allowed = await svc.guard.allowed_models(request)
    return json_response({"object": "list", "data": svc.model_cards(allowed, virtual=True)})


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> Response:
    svc = core(request)
    allowed = await svc.guard.allowed_models(request)
    return json_response(svc.model_card(model, allowed, virtual=True))  # 404 for a model the key may not use


# Served by api/direct.py from the middleware stack, skipping FastAPI's router per request: keep these endpoints
# free of FastAPI dependencies (access control is the Guard's job).
DIRECT_ROUTES = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("POST", "/v1/embeddings"): embeddings,
}
