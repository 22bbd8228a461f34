"""An OpenID Connect relying party over httpx (async): the provider's discovery document and keys (cached; the
keys fetched again when a token names one not known, at most once per ``jwks_refresh_seconds``), the
authorization URL, the code exchange at the token endpoint, and the ID token's checks (signature, iss, aud,
exp, iat, nonce, azp).

PyJWT verifies the signatures; its PyJWKClient is not used because it fetches keys with blocking urllib.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import jwt

from lmops.chat.sso_state import Pending, SignOnError
from lmops.config import SsoConfig

ALGORITHMS = ("RS256", "ES256")
BASE_SCOPES = ("openid", "profile", "email")
LEEWAY = 60  # seconds of clock difference allowed on exp and iat


class OidcError(SignOnError):
    """The provider (or its answer) stops the sign-in."""


@dataclass(frozen=True)
class Provider:
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


class OidcClient:
    def __init__(self, config: SsoConfig, http: httpx.AsyncClient, clock: Callable[[], float] = time.time):
        if not config.issuer or not config.client_id:
            raise ValueError("an OpenID Connect client needs chat.sso.issuer and client_id")
        self.issuer: str = config.issuer
        self.client_id: str = config.client_id
        self.config = config
        self.http = http
        self._clock = clock
        self._provider: Provider | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._keys_fetched = float("-inf")
        self._provider_lock = asyncio.Lock()
        self._keys_lock = asyncio.Lock()

    # -- the provider's documents --------------------------------------------------------------
    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            resp = await self.http.get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            raise OidcError("provider_unreachable", f"{what} ({url}): {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise OidcError("provider_unreachable", f"{what} ({url}) answered HTTP {resp.status_code}")
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise OidcError("provider_unreachable", f"{what} ({url}) is not a JSON object")
        return data

    async def provider(self) -> Provider:
        """The discovery document's endpoints (fetched once; its issuer must be the configured one)."""
        if self._provider is None:
            async with self._provider_lock:
                if self._provider is None:
                    doc = await self._get_json(f"{self.issuer}/.well-known/openid-configuration", "discovery")
                    if doc.get("issuer") != self.issuer:
                        raise OidcError("provider_unreachable", f"the discovery document names issuer "
                                                                f"{doc.get('issuer')!r}, not {self.issuer!r}")
                    urls = [doc.get(k) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")]
                    found = [u for u in urls if isinstance(u, str) and u.startswith(("http://", "https://"))]
                    if len(found) != len(urls):
                        raise OidcError("provider_unreachable", "the discovery document lacks an endpoint URL")
                    self._provider = Provider(*found)
        return self._provider

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        """The provider's signing key ``kid`` (the only one when the token names none)."""
        found = self._find(kid)
        if found is None:
            async with self._keys_lock:
                found = self._find(kid)
                if found is None and self._clock() - self._keys_fetched >= self.config.jwks_refresh_seconds:
                    data = await self._get_json((await self.provider()).jwks_uri, "the provider's keys")
                    self._keys_fetched = self._clock()
                    try:
                        self._keys = jwt.PyJWKSet.from_dict(data)
                    except jwt.PyJWTError as exc:
                        raise OidcError("provider_unreachable", f"the provider's keys are unusable: {exc}") from None
                    found = self._find(kid)
        if found is None:
            raise OidcError("invalid_token", f"the ID token is signed with key {kid!r}, not one the provider lists")
        return found

    def _find(self, kid: str | None) -> jwt.PyJWK | None:
        if self._keys is None:
            return None
        keys = [k for k in self._keys.keys if kid is None or k.key_id == kid]
        return keys[0] if len(keys) == 1 else None

    # -- the flow ------------------------------------------------------------------------------
    async def authorization_url(self, pending: Pending) -> str:
        scopes = list(dict.fromkeys([*BASE_SCOPES, *self.config.scopes]))
        query = urlencode({"response_type": "code", "client_id": self.client_id,
                           "redirect_uri": pending.redirect_uri, "scope": " ".join(scopes), "state": pending.state,
                           "nonce": pending.nonce, "code_challenge": pending.challenge,
                           "code_challenge_method": "S256"})
        endpoint = (await self.provider()).authorization_endpoint
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def exchange(self, code: str, pending: Pending) -> dict[str, Any]:
        """Trade the authorization code for tokens; the ID token's claims, checked."""
        provider = await self.provider()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "code_verifier": pending.verifier}
        headers = {"accept": "application/json"}
        secret = self.config.client_secret()
        if secret is not None and self.config.token_auth == "client_secret_basic":
            # RFC 6749 2.3.1: both parts form-urlencoded before base64
            pair = f"{quote(self.client_id, safe='')}:{quote(secret, safe='')}".encode()
            headers["authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:
            form["client_id"] = self.client_id
            if secret is not None:
                form["client_secret"] = secret
        try:
            resp = await self.http.post(provider.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise OidcError("provider_unreachable", f"token endpoint: {type(exc).__name__}: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            error = body.get("error") if isinstance(body, dict) else None
            raise OidcError("token_refused",
                            f"token endpoint answered HTTP {resp.status_code} ({error or 'no id_token'})")
        return await self.verify(body["id_token"], pending.nonce)

    async def verify(self, token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcError("invalid_token", f"the ID token is malformed: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise OidcError("invalid_token", f"the ID token's algorithm {alg!r} is not one of {', '.join(ALGORITHMS)}")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], audience=self.client_id, issuer=self.issuer, leeway=LEEWAY,
                options={"require": ["iss", "aud", "sub", "exp", "iat"]})
        except jwt.PyJWTError as exc:
            raise OidcError("invalid_token", f"the ID token was refused: {type(exc).__name__}: {exc}") from None
        if claims["iat"] > self._clock() + LEEWAY:
            raise OidcError("invalid_token", "the ID token was issued in the future")
        if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
            raise OidcError("invalid_token", "the ID token's nonce is not this sign-in's")
        if "azp" in claims and claims["azp"] != self.client_id:
            raise OidcError("invalid_token", f"the ID token was issued to another party ({claims['azp']!r})")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise OidcError("invalid_token", "the ID token has no subject")
        return claims
