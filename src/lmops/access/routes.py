"""The admin API (``/admin/...``, admin scope): teams, users, keys, limits and usage reports."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from lmops.access.admin import AdminService, require_manager
from lmops.access.schemas import KeyCreate, LimitsBody, TeamCreate, UserCreate
from lmops.access.service import AccessService
from lmops.api.bodies import parse_json
from lmops.api.deps import json_response
from lmops.api.openapi_bodies import request_body
from lmops.protocol.errors import InvalidRequest, NotFound
from lmops.serving.context import Principal
from lmops.usage.reports import parse_dimensions, usage_report


def _list(rows: list[dict]) -> dict:
    return {"object": "list", "data": rows}


def admin_router(access: AccessService) -> APIRouter:
    """The admin routes of one app's access control."""
    router = APIRouter(prefix="/admin", tags=["admin"])

    async def _admin(request: Request) -> tuple[AdminService, Principal]:
        if access.admin is None:
            raise NotFound("Access control is starting; try again.")
        actor = await access.guard.authenticate(request, "admin")
        require_manager(actor)
        return access.admin, actor

    @router.post("/teams", openapi_extra=request_body(TeamCreate))
    async def create_team(request: Request) -> Response:
        admin, actor = await _admin(request)
        body = await parse_json(request, TeamCreate)
        return json_response(await admin.create_team(actor, body.name), 201)

    @router.get("/teams")
    async def list_teams(request: Request) -> Response:
        admin, actor = await _admin(request)
        return json_response(_list(await admin.list_teams(actor)))

    @router.post("/users", openapi_extra=request_body(UserCreate))
    async def create_user(request: Request) -> Response:
        admin, actor = await _admin(request)
        body = await parse_json(request, UserCreate)
        return json_response(await admin.create_user(actor, body.name, body.team, body.role), 201)

    @router.get("/users")
    async def list_users(request: Request, team: str | None = None) -> Response:
        admin, actor = await _admin(request)
        return json_response(_list(await admin.list_users(actor, team)))

    @router.post("/keys", openapi_extra=request_body(KeyCreate))
    async def create_key(request: Request) -> Response:
        admin, actor = await _admin(request)
        body = await parse_json(request, KeyCreate)
        row, text = await admin.issue_key(actor, body.team, user_id=body.user, name=body.name,
                                          scopes=frozenset(body.scopes), expires_at=body.expires_at)
        return json_response({**row, "key": text}, 201)

    @router.get("/keys")
    async def list_keys(request: Request, team: str | None = None) -> Response:
        admin, actor = await _admin(request)
        return json_response(_list(await admin.list_keys(actor, team)))

    @router.post("/keys/{key}/revoke")
    async def revoke_key(key: str, request: Request) -> Response:
        admin, actor = await _admin(request)
        return json_response(await admin.revoke_key(actor, key))

    @router.put("/limits/{subject_type}/{subject}", openapi_extra=request_body(LimitsBody))
    async def set_limits(subject_type: str, subject: str, request: Request) -> Response:
        admin, actor = await _admin(request)
        body = await parse_json(request, LimitsBody)
        return json_response(await admin.set_limits(actor, subject_type, subject, body.limits()))

    @router.get("/limits/{subject_type}/{subject}")
    async def get_limits(subject_type: str, subject: str, request: Request) -> Response:
        admin, actor = await _admin(request)
        return json_response(await admin.get_limits(actor, subject_type, subject))

    @router.get("/usage")
    async def usage(request: Request, by: str = "team", since: datetime | None = None, until: datetime | None = None,
                    team: str | None = None) -> Response:
        admin, actor = await _admin(request)
        try:
            dims = parse_dimensions(by)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="by") from None
        team_id = await admin.visible_team_id(actor, team)
        report = await usage_report(access.store.db, dims, since=since, until=until, team_id=team_id)
        return json_response(report.as_dict())

    return router
