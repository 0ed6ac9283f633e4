"""A fake Microsoft Entra ID tenant on 127.0.0.1: OpenID metadata, JWKS, authorize and token endpoints.

Tokens are real RS256 JWTs signed with a key the JWKS publishes, shaped like Entra v2 access tokens
(iss `{authority}/{tenant}/v2.0`, aud = the API's client id, tid, oid, scp). The authorize endpoint
signs the (only) test user in at once and redirects with a code (in the query, or in the fragment
with `response_mode=fragment`); the token endpoint checks the PKCE verifier and, as Entra does for
SPA redirect URIs, answers cross-origin, with a refresh token when `offline_access` was asked for
(a single-page app's: only on a cross-origin request, rotated on every use).

Knobs for the misconfigurations and expiries a test plays: `platform = "web"` (the redirect URI
registered as "Web": the token endpoint answers without CORS, so a browser cannot read it),
`token_lifetime` (seconds), `token_claims` (e.g. a v1.0 token), `refuse_refresh`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.loopback import serve_on_loopback

TENANT = "11111111-2222-3333-4444-555555555555"
API_CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
SPA_CLIENT_ID = "99999999-8888-7777-6666-555555555555"


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict:
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    return {"kty": "RSA", "use": "sig", "kid": kid, "n": b64(numbers.n), "e": b64(numbers.e)}


@dataclass
class FakeEntra:
    base: str = ""
    tenant: str = TENANT
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    kid: str = "fake-key-1"
    user_oid: str = "0f0f0f0f-1111-2222-3333-444444444444"
    user_upn: str = "erin@contoso.example"
    fetches: dict = field(default_factory=lambda: {"metadata": 0, "jwks": 0, "token": 0, "refresh": 0})
    codes: dict = field(default_factory=dict)
    authorize_requests: list = field(default_factory=list)  # the query of every authorize request
    platform: str = "spa"  # "web": the redirect URI registered as a Web platform
    token_lifetime: int = 3600
    token_claims: dict = field(default_factory=dict)  # overrides for the access tokens the token endpoint issues
    refuse_refresh: bool = False
    refresh_tokens: set = field(default_factory=set)
    _runner: web.AppRunner | None = None

    @property
    def authority(self) -> str:
        return self.base  # VPN_ENTRA_AUTHORITY

    @property
    def issuer(self) -> str:
        return f"{self.base}/{self.tenant}/v2.0"

    def claims(self, **overrides) -> dict:
        now = int(time.time())
        claims = {
            "iss": self.issuer, "aud": API_CLIENT_ID, "tid": self.tenant, "oid": self.user_oid, "sub": "pairwise-subject",
            "scp": "access_as_user", "upn": self.user_upn, "name": "Erin Example", "ver": "2.0",
            "iat": now, "nbf": now, "exp": now + 3600, "azp": SPA_CLIENT_ID,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def issue(self, *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None, headers: dict | None = None, **overrides) -> str:
        return jwt.encode(self.claims(**overrides), key or self.key, algorithm="RS256", headers={"kid": kid or self.kid, **(headers or {})})

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    # ----- server ------------------------------------------------------------------------------------

    async def start(self) -> "FakeEntra":
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._metadata)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._jwks)
        app.router.add_get("/{tenant}/oauth2/v2.0/authorize", self._authorize)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_route("OPTIONS", "/{tenant}/oauth2/v2.0/token", self._preflight)
        self._runner, self.base = await serve_on_loopback(app)
        return self

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def _tenant_ok(self, request: web.Request) -> None:
        if request.match_info["tenant"] != self.tenant:
            raise web.HTTPBadRequest(text=json.dumps({"error": "invalid_tenant"}), content_type="application/json")

    async def _metadata(self, request: web.Request) -> web.Response:
        self._tenant_ok(request)
        self.fetches["metadata"] += 1
        t = f"{self.base}/{self.tenant}"
        return web.json_response({
            "issuer": self.issuer, "jwks_uri": f"{t}/discovery/v2.0/keys",
            "authorization_endpoint": f"{t}/oauth2/v2.0/authorize", "token_endpoint": f"{t}/oauth2/v2.0/token",
            "id_token_signing_alg_values_supported": ["RS256"], "response_types_supported": ["code"],
        })

    async def _jwks(self, request: web.Request) -> web.Response:
        self._tenant_ok(request)
        self.fetches["jwks"] += 1
        return web.json_response({"keys": [_jwk(self.key, self.kid)]})

    async def _authorize(self, request: web.Request) -> web.Response:
        self._tenant_ok(request)
        q = request.query
        if q.get("client_id") != SPA_CLIENT_ID or q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return web.Response(status=400, text="AADSTS900144: bad authorize request")
        self.authorize_requests.append(dict(q))
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"], "scope": q.get("scope", "")}
        answer = f"code={code}&state={q.get('state', '')}&session_state={uuid.uuid4()}"
        if q.get("response_mode") == "fragment":
            raise web.HTTPFound(f"{q['redirect_uri']}#{answer}")
        sep = "&" if "?" in q["redirect_uri"] else "?"  # Entra's default for the code flow: the query
        raise web.HTTPFound(f"{q['redirect_uri']}{sep}{answer}")

    def _cors(self, request: web.Request) -> dict:
        origin = request.headers.get("Origin")
        return {"Access-Control-Allow-Origin": origin} if origin else {}

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={**self._cors(request), "Access-Control-Allow-Methods": "POST", "Access-Control-Allow-Headers": "content-type"})

    async def _token(self, request: web.Request) -> web.Response:
        self._tenant_ok(request)
        form = await request.post()
        if self.platform != "spa":
            # What Entra says to a browser redeeming a code for a "Web" redirect URI, without CORS headers.
            self.fetches["token"] += 1
            return web.json_response({"error": "invalid_request", "error_description": "AADSTS9002326: Cross-origin token redemption is permitted only for the 'Single-Page Application' client-type."}, status=400)
        if form.get("grant_type") == "refresh_token":
            return self._refresh(request, form)
        self.fetches["token"] += 1
        grant = self.codes.pop(str(form.get("code", "")), None)
        verifier = str(form.get("code_verifier", ""))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if grant is None or grant["challenge"] != challenge or grant["redirect_uri"] != form.get("redirect_uri") or form.get("client_id") != SPA_CLIENT_ID:
            return web.json_response({"error": "invalid_grant", "error_description": "AADSTS70008: bad code or verifier"}, status=400, headers=self._cors(request))
        if f"api://{API_CLIENT_ID}/access_as_user" not in str(form.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope"}, status=400, headers=self._cors(request))
        return self._tokens(request, str(form.get("scope", "")))

    def _refresh(self, request: web.Request, form) -> web.Response:
        self.fetches["refresh"] += 1
        token = str(form.get("refresh_token", ""))
        if self.refuse_refresh or token not in self.refresh_tokens or form.get("client_id") != SPA_CLIENT_ID:
            return web.json_response({"error": "invalid_grant", "error_description": "AADSTS700084: The refresh token has expired."}, status=400, headers=self._cors(request))
        self.refresh_tokens.discard(token)  # rotated: each is used once
        return self._tokens(request, str(form.get("scope", "")))

    def _tokens(self, request: web.Request, scope: str) -> web.Response:
        now = int(time.time())
        body = {
            "token_type": "Bearer", "scope": f"api://{API_CLIENT_ID}/access_as_user", "expires_in": self.token_lifetime,
            "access_token": self.issue(iat=now, nbf=now, exp=now + self.token_lifetime, **self.token_claims),
        }
        if "offline_access" in scope.split() and request.headers.get("Origin"):  # SPAs get one only cross-origin
            body["refresh_token"] = secrets.token_urlsafe(32)
            self.refresh_tokens.add(body["refresh_token"])
        return web.json_response(body, headers=self._cors(request))
