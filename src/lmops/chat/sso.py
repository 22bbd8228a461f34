"""Single sign-on to the web chat: the redirect to the OpenID Connect provider and its callback, which checks the
state, trades the code for an ID token, finds (or creates) the user and opens the usual chat session.

Every failure is an ``SsoFailure`` with a code the web UI explains (``ERRORS``); the detail goes to the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

from lmops.chat.auth import ChatAuth, SignedIn
from lmops.chat.identities import Identities
from lmops.chat.identity import member
from lmops.chat.oidc import OidcClient, OidcError
from lmops.chat.sso_state import Pending, StateError, StateSigner
from lmops.config import SsoConfig

log = logging.getLogger("lmops.chat.sso")

ERRORS = {
    "provider_error": "The sign-in service did not sign you in (it refused or you cancelled). Try again.",
    "invalid_state": "This sign-in did not start in this browser, or its answer was altered. Start it again.",
    "expired": "The sign-in took too long. Start it again.",
    "provider_unreachable": "The sign-in service cannot be reached right now. Try again later.",
    "token_refused": "The sign-in service refused to confirm this sign-in. Start it again.",
    "invalid_token": "The sign-in service's answer could not be verified. Ask an administrator.",
    "no_team": "Your account is in no team of this service. Ask an administrator to add your group.",
    "no_user": "No user could be made for your account. Ask an administrator.",
}
CALLBACK = "/api/chat/sso/callback"


class SsoFailure(Exception):
    def __init__(self, code: str):
        super().__init__(ERRORS[code])
        self.code = code

    @property
    def redirect(self) -> str:
        """Where the browser goes: the chat page, which explains the code."""
        return f"/?sso_error={self.code}"

    @property
    def ends_sign_in(self) -> bool:
        """False when the answer was not this browser's sign-in's (bad state): its own may still come back."""
        return self.code != "invalid_state"


@dataclass(frozen=True)
class Redirect:
    url: str  # the provider's authorization URL
    cookie: str  # the signed pending sign-in
    max_age: int


class SingleSignOn:
    def __init__(self, config: SsoConfig, auth: ChatAuth, identities: Identities, server_secret: bytes):
        self.config = config
        self.label = config.button_label
        self.auth = auth
        self.identities = identities
        self.signer = StateSigner(server_secret, config.state_seconds)
        self.http = httpx.AsyncClient(timeout=config.timeout, follow_redirects=False)
        self.client = OidcClient(config, self.http)

    async def close(self) -> None:
        await self.http.aclose()

    async def login(self, base_url: str) -> Redirect:
        """Where to send the browser, and the cookie that remembers this sign-in; ``base_url``: lmops's own."""
        pending = self.signer.new(base_url.rstrip("/") + CALLBACK)
        try:
            url = await self.client.authorization_url(pending)
        except OidcError as exc:
            raise self._failed(exc.code, str(exc)) from None
        return Redirect(url, self.signer.seal(pending), self.config.state_seconds)

    async def callback(self, params: dict[str, str], cookie: str | None) -> SignedIn:
        """The provider's answer (query parameters) checked against the browser's cookie: a new session."""
        try:
            pending = self.signer.open(cookie, params.get("state"))
        except StateError as exc:
            raise self._failed(exc.code, str(exc)) from None
        if "error" in params or not params.get("code"):
            raise self._failed("provider_error", f"the provider answered error={params.get('error')!r} "
                                                 f"({params.get('error_description', '')[:200]!r})")
        return await self._sign_in(params["code"], pending)

    async def _sign_in(self, code: str, pending: Pending) -> SignedIn:
        try:
            claims = await self.client.exchange(code, pending)
            account = await self.identities.user(self.client.issuer, claims)
        except OidcError as exc:
            raise self._failed(exc.code, str(exc)) from None
        log.info("single sign-on of %s (subject %s) as user %s in team %s", self.client.issuer, claims["sub"],
                 account.user_id, account.team_id)
        return await self.auth.open_session(member(account.user_id, account.name, account.team_id, account.role))

    @staticmethod
    def _failed(code: str, detail: str) -> SsoFailure:
        log.warning("single sign-on failed (%s): %s", code, detail)
        return SsoFailure(code)
