"""A fake Microsoft Graph over https on 127.0.0.1, with a self-signed certificate made for the test.

Serves `POST /v1.0/users/{id}/checkMemberGroups` as Graph documents it: `{"groupIds": [≤20 ids]}` in,
`{"value": [the ids the user is a member of]}` out; 404 `Request_ResourceNotFound` for a user the
directory does not hold; 400 for more than 20 ids; 401 without the expected bearer token. A test
changes `members` at any moment (someone leaves a group mid-session), takes Graph down (`down`:
the connection is refused), or queues answers (`faults`: 403, 429 with Retry-After, 503, …).

`trust()` is the client-side ssl context that trusts only this fake's certificate (what
VPN_GRAPH_ENDPOINT's module accepts); nothing is added to the system's trust store.
"""
from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TOKEN = "fake-graph-app-token"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost), valid for a day; returns (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake graph")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "graph-cert.pem", folder / "graph-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class FakeGraph:
    members: dict[str, set[str]] = field(default_factory=dict)  # user object id -> group object ids (transitive already)
    calls: list[dict] = field(default_factory=list)  # {"user": …, "groupIds": […], "status": …}
    faults: list[tuple[int, dict, dict]] = field(default_factory=list)  # (status, body, headers) answered first
    down: bool = False  # refuse connections, as an unreachable Graph does

    def __post_init__(self) -> None:
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="fake-graph-")
        self._cert, self._key = self_signed(Path(self._folder.name))
        self._port = 0

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self._cert))

    async def start(self) -> "FakeGraph":
        app = web.Application()
        app.router.add_post("/v1.0/users/{user}/checkMemberGroups", self._check)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await self._listen()
        self.base_url = f"https://127.0.0.1:{self._port}"
        return self

    async def _listen(self) -> None:
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(str(self._cert), str(self._key))
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self._port, ssl_context=server_ssl)
        await self._site.start()
        self._port = self._site._server.sockets[0].getsockname()[1]  # noqa: SLF001

    async def go_down(self) -> None:
        """Stop listening (new connections are refused) and drop every request on a kept-alive one,
        as an unreachable Graph does."""
        self.down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def come_back(self) -> None:
        self.down = False
        await self._listen()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        self._folder.cleanup()

    def checks_of(self, user: str) -> int:
        return sum(1 for c in self.calls if c["user"] == user)

    async def _check(self, request: web.Request) -> web.Response:
        if self.down and request.transport is not None:
            request.transport.close()  # a connection kept alive from before: dropped without an answer
            raise web.HTTPServiceUnavailable()
        user = request.match_info["user"]
        body = await request.json()
        ids = body.get("groupIds") if isinstance(body, dict) else None
        call = {"user": user, "groupIds": ids, "status": 200}
        self.calls.append(call)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            call["status"] = 401
            return web.json_response({"error": {"code": "InvalidAuthenticationToken", "message": "Access token is empty."}}, status=401)
        if self.faults:
            status, payload, headers = self.faults.pop(0)
            call["status"] = status
            return web.json_response(payload, status=status, headers=headers)
        if not isinstance(ids, list) or not 1 <= len(ids) <= 20:
            call["status"] = 400
            return web.json_response({"error": {"code": "Request_BadRequest", "message": "groupIds: 1 to 20 ids"}}, status=400)
        if user not in self.members:
            call["status"] = 404
            return web.json_response({"error": {"code": "Request_ResourceNotFound", "message": f"Resource '{user}' does not exist"}}, status=404)
        mine = self.members[user]
        return web.json_response({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(Edm.String)",
                                  "value": [g for g in ids if g in mine]})


async def token() -> str:
    """The bot's app token, as the tests hand it in (no MSAL, no sign-in host)."""
    return TOKEN
