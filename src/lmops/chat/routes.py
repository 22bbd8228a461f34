"""The chat API (``/api/chat/...``): thin routes that parse, call the chat service, and answer.

A signed-in browser sends its session cookie, and on every state-changing request the session's CSRF token in
``X-CSRF-Token``; a caller with an API key sends ``Authorization: Bearer <key>`` instead (no CSRF token).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from lmops.api.bodies import parse_json, read_body
from lmops.api.deps import json_response
from lmops.api.openapi_bodies import request_body
from lmops.chat.auth import COOKIE, SignedIn
from lmops.chat.export import FORMATS, as_csv, as_json, as_markdown, as_xlsx, export_rows
from lmops.chat.identity import ChatUser
from lmops.chat.schemas import (ConversationCreate, ConversationPatch, MessageCreate, MessageEdit, PasswordSet,
                                Regenerate, SignIn)
from lmops.chat.service import ChatService
from lmops.chat.sso import ERRORS, SingleSignOn, SsoFailure
from lmops.chat.sso_state import COOKIE as SSO_COOKIE
from lmops.chat.sso_state import COOKIE_PATH as SSO_PATH
from lmops.protocol.errors import InvalidRequest, NotFound, PermissionDenied
from lmops.serving.sse import EventStreamResponse

MAX_PAGE = 200
MAX_SEQ = 2**31 - 1
IMPORT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "description": "a ChatGPT conversations.json or an Open WebUI export: a list of conversations (see docs/chat.md)",
    "type": "array", "items": {"type": "object"}}}}}}


def _limit(limit: int, default: int = 50) -> int:
    return max(1, min(limit or default, MAX_PAGE))


def _stream(events: AsyncIterator[bytes]) -> Response:
    return EventStreamResponse(events)  # the middleware adds x-request-id


def _https(request: Request) -> bool:
    """Whether the browser talks https: to lmops itself, or to a proxy in front that says so. Trusting the header
    only ever adds the Secure flag, which a client that lies about it loses its own session to."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _session_cookie(response: Response, request: Request, signed: SignedIn, hours: float) -> None:
    response.set_cookie(COOKIE, signed.token, max_age=int(hours * 3600), path="/", secure=_https(request),
                        httponly=True, samesite="lax")


def _fields(body: ConversationCreate) -> dict[str, object]:
    """The fields a body sets (params as a plain dict without unset values)."""
    fields: dict[str, object] = {name: getattr(body, name) for name in body.model_fields_set}
    if "params" in fields:
        fields["params"] = body.params.model_dump(exclude_none=True) if body.params is not None else {}
    return fields


def chat_router(chat: ChatService) -> APIRouter:
    router = APIRouter(prefix="/api/chat", tags=["chat"])
    auth = chat.auth

    async def reader(request: Request) -> ChatUser:
        return await auth.user(request, write=False)

    async def writer(request: Request) -> ChatUser:
        return await auth.user(request, write=True)

    # -- sign-in -------------------------------------------------------------------------------
    @router.post("/session", openapi_extra=request_body(SignIn))
    async def sign_in(request: Request) -> Response:
        body = await parse_json(request, SignIn)
        signed = await auth.sign_in(body.username, body.password, request.client.host if request.client else "-")
        response = json_response({"object": "chat.session", "user": signed.user.as_dict(),
                                  "csrf_token": signed.csrf_token,
                                  "expires_at": int(signed.expires_at.timestamp())}, 201)
        _session_cookie(response, request, signed, auth.session_hours)
        return response

    @router.get("/session")
    async def current_session(request: Request) -> Response:
        user = await reader(request)
        found = await auth.session(request) if not user.via_key else None
        return json_response({"object": "chat.session", "user": user.as_dict(),
                              "csrf_token": found[1] if found else None})

    @router.delete("/session")
    async def sign_out(request: Request) -> Response:
        await writer(request)
        await auth.sign_out(request)
        response = json_response({"object": "chat.session", "deleted": True})
        response.delete_cookie(COOKIE, path="/", secure=_https(request), httponly=True, samesite="lax")
        return response

    # -- single sign-on (OpenID Connect) -------------------------------------------------------
    def sso_on() -> SingleSignOn:
        if chat.sso is None:
            raise NotFound("Single sign-on is not configured (chat.sso), or access control is off.")
        return chat.sso

    @router.get("/sso")
    async def sso_info(error: str | None = None) -> Response:
        """Whether the sign-in form offers single sign-on; ``error``: a failed sign-in's code, explained."""
        sso = chat.sso
        body: dict[str, object] = {"object": "chat.sso", "enabled": sso is not None,
                                   "label": sso.label if sso else None,
                                   "login_url": "/api/chat/sso/login" if sso else None}
        if error is not None:
            body["error"] = {"code": error if error in ERRORS else "unknown",
                             "message": ERRORS.get(error, "Single sign-on failed. Try again.")}
        return json_response(body)

    @router.get("/sso/login")
    async def sso_login(request: Request) -> Response:
        sso = sso_on()
        try:
            redirect = await sso.login(chat.core.settings.server.public_url or str(request.base_url))
        except SsoFailure as exc:
            return RedirectResponse(exc.redirect, 302)
        response = RedirectResponse(redirect.url, 302)
        response.set_cookie(SSO_COOKIE, redirect.cookie, max_age=redirect.max_age, path=SSO_PATH,
                            secure=_https(request), httponly=True, samesite="lax")
        return response

    @router.get("/sso/callback")
    async def sso_callback(request: Request) -> Response:
        sso = sso_on()
        try:
            signed = await sso.callback(dict(request.query_params), request.cookies.get(SSO_COOKIE))
        except SsoFailure as exc:
            response = RedirectResponse(exc.redirect, 302)
            if not exc.ends_sign_in:
                return response
        else:
            response = RedirectResponse("/", 302)
            _session_cookie(response, request, signed, auth.session_hours)
        response.delete_cookie(SSO_COOKIE, path=SSO_PATH, secure=_https(request), httponly=True, samesite="lax")
        return response

    @router.put("/users/{user}/password", openapi_extra=request_body(PasswordSet))
    async def set_password(user: str, request: Request) -> Response:
        """An administrator (or the team admin of the user's team) sets a user's web password."""
        actor = await chat.core.guard.authenticate(request, "admin")
        body = await parse_json(request, PasswordSet)
        if not auth.access_enabled:
            raise NotFound("Access control is off: the local user signs in without a password.")
        if actor.role not in ("admin", "team_admin"):
            raise PermissionDenied("This route is for administrators.", code="admin_required")
        account = await chat.accounts.user(user)
        if account is None or (actor.role != "admin" and actor.team_id != account.team_id):
            raise NotFound(f"No user '{user}'.", param="user")  # a team admin sees only the team's users
        await auth.set_password(account.user_id, body.password)
        return json_response({"object": "chat.password", "user": account.user_id, "updated": True})

    # -- models and conversations --------------------------------------------------------------
    @router.get("/models")
    async def models(request: Request) -> Response:
        user = await reader(request)
        return json_response({"object": "list", "data": await chat.models(user, request)})

    @router.get("/conversations")
    async def list_conversations(request: Request, limit: int = 50, cursor: str | None = None,
                                 q: str | None = None) -> Response:
        user = await reader(request)
        page = await chat.store.conversations(user.owner, limit=_limit(limit), cursor=cursor, q=q or None)
        return json_response(page)

    @router.post("/conversations", openapi_extra=request_body(ConversationCreate))
    async def create_conversation(request: Request) -> Response:
        user = await writer(request)
        raw = await read_body(request)
        body = ConversationCreate() if not raw.strip() else await parse_json(request, ConversationCreate)
        return json_response(await chat.create(user, request, _fields(body)), 201)

    @router.get("/conversations/{conversation_id}")
    async def get_conversation(conversation_id: str, request: Request) -> Response:
        user = await reader(request)
        return json_response(await chat.store.get(user.owner, conversation_id))

    @router.patch("/conversations/{conversation_id}", openapi_extra=request_body(ConversationPatch))
    async def update_conversation(conversation_id: str, request: Request) -> Response:
        user = await writer(request)
        body = await parse_json(request, ConversationPatch)
        return json_response(await chat.update(user, request, conversation_id, _fields(body)))

    @router.delete("/conversations/{conversation_id}")
    async def delete_conversation(conversation_id: str, request: Request) -> Response:
        user = await writer(request)
        await chat.delete(user, conversation_id)
        return json_response({"id": conversation_id, "object": "chat.conversation", "deleted": True})

    # -- messages ------------------------------------------------------------------------------
    @router.get("/conversations/{conversation_id}/messages")
    async def list_messages(conversation_id: str, request: Request, before: int | None = None,
                            limit: int = 50) -> Response:
        user = await reader(request)
        await chat.store.get(user.owner, conversation_id)
        if before is not None:
            before = max(0, min(before, MAX_SEQ))  # within the column's range (PostgreSQL's integer)
        page = await chat.store.page(conversation_id, before=before, limit=_limit(limit))
        page["data"] = await asyncio.to_thread(chat.markdown.messages, page["data"])  # CPU work, off the loop
        page["summary"] = await chat.summary(conversation_id)  # where older turns were summarised, if they were
        return json_response(page)

    @router.post("/conversations/{conversation_id}/messages", openapi_extra=request_body(MessageCreate))
    async def send_message(conversation_id: str, request: Request) -> Response:
        user = await writer(request)
        body = await parse_json(request, MessageCreate)
        return _stream(await chat.send(user, request, conversation_id, body.content, body.model))

    @router.post("/conversations/{conversation_id}/messages/{message_id}/edit", openapi_extra=request_body(MessageEdit))
    async def edit_message(conversation_id: str, message_id: str, request: Request) -> Response:
        user = await writer(request)
        body = await parse_json(request, MessageEdit)
        return _stream(await chat.edit(user, request, conversation_id, message_id, body.content))

    @router.post("/conversations/{conversation_id}/regenerate", openapi_extra=request_body(Regenerate))
    async def regenerate(conversation_id: str, request: Request) -> Response:
        user = await writer(request)
        raw = await read_body(request)
        body = Regenerate() if not raw.strip() else await parse_json(request, Regenerate)
        return _stream(await chat.regenerate(user, request, conversation_id, body.model))

    @router.post("/conversations/{conversation_id}/stop")
    async def stop(conversation_id: str, request: Request) -> Response:
        user = await writer(request)
        stopped = await chat.stop_answer(user, conversation_id)
        return json_response({"object": "chat.stop", "conversation_id": conversation_id, "stopped": stopped})

    # -- export and import ---------------------------------------------------------------------
    @router.get("/export")
    async def export(request: Request, fmt: str = Query("json", alias="format"),
                     conversation: str | None = None) -> Response:
        user = await reader(request)
        if fmt not in FORMATS:
            raise InvalidRequest(f"Unknown format '{fmt}': one of {', '.join(FORMATS)}.", param="format")
        if conversation is not None:
            await chat.store.get(user.owner, conversation)
        rows = export_rows(chat.store, user.owner, conversation)
        headers = {"content-disposition": f'attachment; filename="lmops-chat.{fmt}"'}
        if fmt == "xlsx":
            return Response(await as_xlsx(rows), media_type=FORMATS[fmt], headers=headers)
        stream = {"csv": as_csv, "json": as_json, "md": as_markdown}[fmt](rows)
        return StreamingResponse(stream, media_type=FORMATS[fmt], headers=headers)

    @router.post("/import", openapi_extra=IMPORT_BODY)
    async def import_conversations(request: Request) -> Response:
        user = await writer(request)
        try:
            data = orjson.loads(await read_body(request))
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
        return json_response(await chat.import_export(user, data), 201)

    return router
