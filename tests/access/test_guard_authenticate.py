"""``guard.authenticate(request, scope)``: what other capabilities (batches, files, chat) use to scope by team."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from lmops.protocol.errors import AuthenticationError, PermissionDenied
from lmops.testing.access import running_access
from lmops.testing.settings import make_settings


def _request(key: str | None) -> Request:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    return Request({"type": "http", "method": "GET", "path": "/v1/batches", "headers": headers})


async def test_authenticate_gives_the_team_of_the_key(tmp_path):
    settings = make_settings(tmp_path, [], access={"enabled": True, "bootstrap": False})
    async with running_access(settings) as (access, admin):
        a, b = await admin.create_team(None, "a"), await admin.create_team(None, "b")
        user = await admin.create_user(None, "ann", "a")
        _, key_a = await admin.issue_key(None, "a", user_id=user["id"], scopes=frozenset({"batch"}))
        _, key_b = await admin.issue_key(None, "b", scopes=frozenset({"inference"}))
        principal = await access.guard.authenticate(_request(key_a), "batch")
        assert (principal.team_id, principal.user_id, principal.role) == (a["id"], user["id"], "member")
        with pytest.raises(PermissionDenied):
            await access.guard.authenticate(_request(key_b), "batch")
        assert (await access.guard.authenticate(_request(key_b), "inference")).team_id == b["id"]
        for bad in (None, "lmops-abcdefgh-" + "x" * 30):
            with pytest.raises(AuthenticationError):
                await access.guard.authenticate(_request(bad), "batch")
