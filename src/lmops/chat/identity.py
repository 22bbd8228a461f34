"""Who uses the chat: a signed-in user of access control, a caller with an API key, or the local user.

``ChatUser.owner`` owns the conversations: the user's id, ``key:<key id>`` for a key without a user, or
``local`` when access control is off (laptop mode, one local user).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmops.serving.context import Principal

LOCAL_USER = "local"
LOCAL_TEAM = "default"  # the team OpenGuard admits as, so laptop data stays with the bootstrap team


@dataclass(frozen=True)
class ChatUser:
    principal: Principal
    name: str
    via_key: bool  # authenticated by an Authorization header: no cookie, so no CSRF token needed

    @property
    def owner(self) -> str:
        p = self.principal
        if p.user_id:
            return p.user_id
        return f"key:{p.key_id}" if p.key_id else LOCAL_USER

    def as_dict(self) -> dict[str, str]:
        return {"id": self.owner, "name": self.name, "team_id": self.principal.team_id, "role": self.principal.role}


def local_user(via_key: bool = False) -> ChatUser:
    return ChatUser(Principal(team_id=LOCAL_TEAM, user_id=LOCAL_USER, role="admin",
                              scopes=frozenset({"inference", "batch", "admin"})), LOCAL_USER, via_key)


def member(user_id: str, name: str, team_id: str, role: str) -> ChatUser:
    """A signed-in user: may call models (inference scope) under the team's rules, billed to the user."""
    return ChatUser(Principal(team_id=team_id, user_id=user_id, role=role, scopes=frozenset({"inference"})),
                    name, False)
