"""A fake OpenID Connect provider (tests): discovery, a JWKS with the key it generates (RSA for RS256, P-256 for
ES256: ``algorithm``), ``/authorize`` that
approves ``claims``'s user at once (302 back to the redirect URI with a code and the state), and ``/token`` that
checks the code, the redirect URI, the client's authentication (client_secret_basic or _post) and the PKCE
verifier against the S256 challenge, then answers a signed ID token (iss, aud, sub, nonce, iat, exp and ``claims``).

``rotate()`` makes a new key under a new kid (the JWKS lists only it). Switches for tests: ``other_key`` (sign
with a key the JWKS does not list, under the listed kid), ``hs256`` (sign with HS256 keyed by the client secret,
as some providers can), ``expired``,
``wrong_nonce``, ``wrong_audience``, ``token_error`` (the token endpoint answers this OAuth error), ``deny`` (the
authorization answers ``error=access_denied``). ``authorizations`` keeps each /authorize query, ``token_requests``
each /token form, ``jwks_requests`` counts the JWKS fetches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _new_key(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    claims: dict[str, Any]


@dataclass
class FakeOidc:
    client_id: str = "lmops"
    client_secret: str | None = "fake-client-secret-0123456789abcdef"  # None: a public client
    claims: dict[str, Any] = field(default_factory=lambda: {
        "sub": "248289761001", "preferred_username": "jane", "email": "jane@example.org", "groups": ["research"]})
    algorithm: str = "RS256"  # or ES256 (set it before the first token, or rotate())
    other_key: bool = False
    hs256: bool = False
    expired: bool = False
    wrong_nonce: bool = False
    wrong_audience: bool = False
    token_error: str | None = None
    deny: bool = False
    authorizations: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    jwks_requests: int = 0
    key: PrivateKey | None = None  # made on first use
    kid: str = "fake-key-1"
    _grants: dict[str, _Grant] = field(default_factory=dict)

    def rotate(self) -> None:
        self.key = _new_key(self.algorithm)
        self.kid = f"fake-key-{int(self.kid.rsplit('-', 1)[1]) + 1}"

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/.well-known/openid-configuration", self._discovery),
                                 Route("/jwks", self._jwks), Route("/authorize", self._authorize),
                                 Route("/token", self._token, methods=["POST"])])

    @staticmethod
    def _issuer(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def _discovery(self, request: Request) -> Response:
        iss = self._issuer(request)
        return JSONResponse({
            "issuer": iss, "authorization_endpoint": f"{iss}/authorize", "token_endpoint": f"{iss}/token",
            "jwks_uri": f"{iss}/jwks", "response_types_supported": ["code"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.algorithm], "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]})

    async def _jwks(self, request: Request) -> Response:
        self.jwks_requests += 1
        key = self._key()
        public = key.public_key()
        jwk = (RSAAlgorithm.to_jwk(public, as_dict=True) if isinstance(public, rsa.RSAPublicKey)
               else ECAlgorithm.to_jwk(public, as_dict=True))
        return JSONResponse({"keys": [{**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}]})

    def _key(self) -> PrivateKey:
        if self.key is None:
            self.key = _new_key(self.algorithm)
        return self.key

    async def _authorize(self, request: Request) -> Response:
        q = dict(request.query_params)
        self.authorizations.append(q)
        if q.get("client_id") != self.client_id or not q.get("redirect_uri"):
            return JSONResponse({"error": "invalid_request", "error_description": "unknown client"}, 400)
        back = q["redirect_uri"]
        if self.deny:
            return _back(back, {"error": "access_denied", "state": q.get("state", "")})
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return _back(back, {"error": "invalid_request", "state": q.get("state", "")})
        code = secrets.token_urlsafe(24)
        self._grants[code] = _Grant(q["client_id"], back, q["code_challenge"], q.get("nonce"), dict(self.claims))
        return _back(back, {"code": code, "state": q.get("state", "")})

    async def _token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.token_requests.append(form)
        if self.token_error is not None:
            return _oauth_error(self.token_error, "the fake was told to refuse")
        if not self._client_ok(request, form):
            return _oauth_error("invalid_client", "client authentication failed", 401)
        grant = self._grants.pop(form.get("code", ""), None)  # a code is good once
        if form.get("grant_type") != "authorization_code" or grant is None:
            return _oauth_error("invalid_grant", "unknown or used code")
        if form.get("redirect_uri") != grant.redirect_uri:
            return _oauth_error("invalid_grant", "redirect_uri differs from the authorization request's")
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not hmac.compare_digest(challenge, grant.challenge):
            return _oauth_error("invalid_grant", "PKCE verification failed")
        return JSONResponse({"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 3600,
                             "id_token": self.id_token(self._issuer(request), grant)},
                            headers={"cache-control": "no-store"})

    def _client_ok(self, request: Request, form: dict[str, str]) -> bool:
        if self.client_secret is None:
            return form.get("client_id") == self.client_id
        basic = request.headers.get("authorization", "")
        if basic.startswith("Basic "):
            user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            return unquote(user) == self.client_id and unquote(password) == self.client_secret
        return form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret

    def id_token(self, issuer: str, grant: _Grant) -> str:
        now = int(time.time())
        exp = now - 600 if self.expired else now + 300
        claims = {**grant.claims, "iss": issuer, "aud": "someone-else" if self.wrong_audience else grant.client_id,
                  "iat": now - 900 if self.expired else now, "exp": exp,
                  "nonce": "not-the-nonce" if self.wrong_nonce else grant.nonce}
        if self.hs256:
            return jwt.encode(claims, self.client_secret or "", algorithm="HS256", headers={"kid": self.kid})
        key = _new_key(self.algorithm) if self.other_key else self._key()
        return jwt.encode(claims, key, algorithm=self.algorithm, headers={"kid": self.kid})


def _back(redirect_uri: str, params: dict[str, str]) -> Response:
    sep = "&" if "?" in redirect_uri else "?"
    return RedirectResponse(f"{redirect_uri}{sep}{urlencode(params)}", 302)


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status)
