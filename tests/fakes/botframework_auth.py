"""The Bot Framework's token services, faked on 127.0.0.1 for Teams in production mode.

- `FakeBotFramework` (http): the OpenID metadata and JWKS the Bot Framework publishes at
  login.botframework.com, keys carrying `endorsements` (the channels a key may sign for), and the
  tokens the channel sends with each activity: RS256, iss `https://api.botframework.com`,
  aud = the bot's app id, `serviceurl` = the activity's serviceUrl. `jwks_delay` makes the key
  download slow (a bot that fetches keys on its event loop stops answering meanwhile).
- `FakeEntraTokens` (https, as MSAL insists on https authorities): tenant discovery and the v2.0
  token endpoint for the bot's own token (client credentials, scope `https://api.botframework.com/.default`),
  plus an App Service style managed-identity endpoint (`IDENTITY_ENDPOINT`/`IDENTITY_HEADER`).
  Its self-signed certificate is written to `ca_file`: point `REQUESTS_CA_BUNDLE` at it.

Keys and JWK encoding come from tests/fakes/entra.py.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.fakes.entra import _jwk
from tests.support.loopback import serve_on_loopback

ISSUER = "https://api.botframework.com"  # what Bot Framework channel tokens say (AuthenticationConstants)
SCOPE = "https://api.botframework.com/.default"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FakeBotFramework:
    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    kid: str = "bf-key-1"
    endorsements: tuple[str, ...] = ("msteams", "skype", "webchat")
    extra_keys: dict = field(default_factory=dict)  # kid -> (key, endorsements): more published keys
    jwks_delay: float = 0.0
    fetches: dict = field(default_factory=lambda: {"metadata": 0, "jwks": 0})
    base: str = ""
    _runner: web.AppRunner | None = None

    @property
    def metadata_url(self) -> str:
        return f"{self.base}/v1/.well-known/openidconfiguration"

    async def start(self) -> "FakeBotFramework":
        app = web.Application()
        app.router.add_get("/v1/.well-known/openidconfiguration", self._metadata)
        app.router.add_get("/v1/.well-known/keys", self._jwks)
        self._runner, self.base = await serve_on_loopback(app)
        return self

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def issue(self, app_id: str, service_url: str, *, key: rsa.RSAPrivateKey | None = None, kid: str | None = None,
              algorithm: str = "RS256", headers: dict | None = None, **overrides) -> str:
        now = int(time.time())
        claims = {"serviceurl": service_url, "nbf": now - 5, "exp": now + 3600, "iss": ISSUER, "aud": app_id}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        signing_key = None if algorithm == "none" else (key or self.key)
        header = {"kid": kid or self.kid, **(headers or {})}  # a None value leaves that header out
        return jwt.encode(claims, signing_key, algorithm=algorithm, headers={k: v for k, v in header.items() if v is not None})

    async def _metadata(self, request: web.Request) -> web.Response:
        self.fetches["metadata"] += 1
        return web.json_response({
            "issuer": ISSUER, "authorization_endpoint": "https://invalid.botframework.com",
            "jwks_uri": f"{self.base}/v1/.well-known/keys",
            "id_token_signing_alg_values_supported": ["RS256"], "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        })

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches["jwks"] += 1
        if self.jwks_delay:
            await asyncio.sleep(self.jwks_delay)
        keys = [{**_jwk(self.key, self.kid), "endorsements": list(self.endorsements)}]
        keys += [{**_jwk(k, kid), "endorsements": list(e)} for kid, (k, e) in self.extra_keys.items()]
        return web.json_response({"keys": keys})


def _self_signed(directory: Path) -> tuple[ssl.SSLContext, Path]:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "fake-entra.crt", directory / "fake-entra.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


@dataclass
class FakeEntraTokens:
    directory: Path
    tenant: str
    client_id: str
    client_secret: str
    identity_header: str = field(default_factory=lambda: secrets.token_hex(8))
    token_requests: list = field(default_factory=list)  # (grant or "msi", client id) per token issued
    issued: list = field(default_factory=list)
    base: str = ""
    ca_file: Path | None = None
    _runner: web.AppRunner | None = None

    @property
    def login_url(self) -> str:
        """The authority prefix (like https://login.microsoftonline.com/); the tenant goes after it."""
        return f"{self.base}/"

    @property
    def identity_endpoint(self) -> str:
        return f"{self.base}/msi/token"

    async def start(self) -> "FakeEntraTokens":
        app = web.Application()
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_get("/msi/token", self._msi)
        context, self.ca_file = _self_signed(self.directory)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.base = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001
        return self

    async def close(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def _new_token(self) -> str:
        token = f"bot-token-{len(self.issued) + 1}-{secrets.token_hex(6)}"
        self.issued.append(token)
        return token

    async def _discovery(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if tenant != self.tenant:
            return web.json_response({"error": "invalid_tenant"}, status=400)
        t = f"{self.base}/{tenant}"
        return web.json_response({
            "issuer": f"{t}/v2.0", "token_endpoint": f"{t}/oauth2/v2.0/token", "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
            "jwks_uri": f"{t}/discovery/v2.0/keys", "response_types_supported": ["code", "token"],
        })

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.match_info["tenant"] != self.tenant:
            return web.json_response({"error": "invalid_tenant"}, status=400)
        if form.get("grant_type") != "client_credentials" or form.get("client_id") != self.client_id:
            return web.json_response({"error": "unauthorized_client"}, status=400)
        if form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret"}, status=401)
        if form.get("scope") != SCOPE:
            return web.json_response({"error": "invalid_scope"}, status=400)
        self.token_requests.append(("client_credentials", form.get("client_id")))
        return web.json_response({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": self._new_token()})

    async def _msi(self, request: web.Request) -> web.Response:
        if request.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return web.json_response({"error": "unauthorized"}, status=401)
        if request.query.get("client_id") != self.client_id or request.query.get("resource") != "https://api.botframework.com":
            return web.json_response({"error": "invalid_request"}, status=400)
        self.token_requests.append(("msi", request.query.get("client_id")))
        return web.json_response({"access_token": self._new_token(), "expires_on": str(int(time.time()) + 3600),
                                  "resource": request.query["resource"], "token_type": "Bearer"})
