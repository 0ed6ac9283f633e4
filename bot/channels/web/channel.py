"""The web page and HTTP API: a third channel of the same engine (allowlist, sessions, providers, audit).

Routes turn bearer-token requests into service calls; the channel side (progress, texts, config
delivery) writes to the store, so any replica can answer the next poll. Tokens come from Microsoft
Entra ID (bot/channels/web/signin_entra.py) or local accounts (bot/channels/web/signin_local.py); the allowlist is the same one
the chat channels use.

Configs are held for the owner as two claims (bot/one_time_configs.py), sealed under tokens derived from the
server secret and the session id: the store alone cannot open them, every replica can. The `.conf`
can be taken once; the QR once as well, and only until the `.conf` was taken (taking the file
erases the QR too). A session's end erases both.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

from aiohttp import web

from bot import one_time_configs
from bot.access import Role
from bot.channels.web.signin_entra import EntraUnavailable, EntraVerifier
from bot.channels.web.signin_entra import InvalidToken as EntraInvalid
from bot.channels.web.client_address import client_address
from bot.channels.web.signin_local import LocalAuth, LoginRefused, TooManyAttempts, derive_key
from bot.channels.web.signin_local import InvalidToken as LocalInvalid
from bot.channels.web.config import WebConfig
from bot.channels.web.openapi import openapi_document
from bot.messages import ConversationRef, Identity, InvalidIdentity, UserKey
from bot.replies import ChannelDefaults, ConfigDelivery
from bot.engine.service import Refused
from bot.store.model import ACTIVE_STATES, IN_FLIGHT_STATES, Session, SessionState
from bot.store.ports import AuditEntry
from cards.model import Card
from cards.text import render_card_text
from provisioner.wireguard import is_valid_key

if TYPE_CHECKING:
    from bot.wiring import Runtime

log = logging.getLogger(__name__)
MAX_TOKEN = 8192
MAX_JSON = 16 * 1024
MAX_EXTEND = 7 * 24 * 60  # the service applies the real cap; this only bounds the input
NOTES_KEPT = 12
NOTE_LIMIT = 2000
NOTES_BYTES = 15_000
SESSION_ID = r"[0-9a-f]{10}"
API_PATHS = frozenset({"/api/login", "/api/me", "/api/sessions", "/api/openapi.json"})  # and /api/sessions/…
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


Handler = Callable[[web.Request, Identity, Role], Awaitable[web.StreamResponse]]


class WebChannel(ChannelDefaults):
    name = "web"

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self._runtime: Runtime | None = None
        self._local: LocalAuth | None = None
        self._entra: EntraVerifier | None = None
        self._seal_key = derive_key(config.local_secret, "held configs")
        self._static: dict[str, tuple[bytes, str]] = {}

    # ----- lifecycle and routes ---------------------------------------------------------------------

    async def attach(self, deps: object) -> None:
        """Temporary: the web channel still reaches into the runtime (being replaced by WebDeps)."""
        runtime = getattr(deps, "_runtime_for_web")
        self._runtime = runtime
        self._local = LocalAuth(self.config.local_secret, runtime.store, runtime.service.clock)
        if self.config.entra_tenant_id:
            self._entra = EntraVerifier(runtime.http, self.config.entra_authority, self.config.entra_tenant_id, self.config.entra_audience)
        self._load_static()

    @property
    def runtime(self) -> "Runtime":
        assert self._runtime is not None, "web channel used before the runtime started"
        return self._runtime

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/app.js", self._asset)
        r.add_get("/style.css", self._asset)
        r.add_get("/api/openapi.json", self._openapi)
        r.add_post("/api/login", self._login)
        r.add_get("/api/me", self._authed(self._me))
        r.add_get("/api/sessions", self._authed(self._list))
        r.add_post("/api/sessions", self._authed(self._start))
        r.add_get(f"/api/sessions/{{id:{SESSION_ID}}}", self._authed(self._get))
        r.add_delete(f"/api/sessions/{{id:{SESSION_ID}}}", self._authed(self._stop))
        r.add_post(f"/api/sessions/{{id:{SESSION_ID}}}/extend", self._authed(self._extend))
        # No HEAD: it would run the handler and spend the once-only config on a body nobody receives.
        r.add_get(f"/api/sessions/{{id:{SESSION_ID}}}/config", self._authed(self._config), allow_head=False)
        r.add_get(f"/api/sessions/{{id:{SESSION_ID}}}/config.png", self._authed(self._config_png), allow_head=False)

    # ----- Channel interface: everything lands in the store, keyed by the request ------------------

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        key = self._progress_key(conv)
        if not key:
            return
        store, now = self.runtime.store, self.runtime.service.clock()
        try:
            notes = json.loads(await store.get_progress(f"{key}:notes") or "[]")
        except ValueError:
            notes = []
        text = for_the_page(text)
        notes = [*notes, text[:NOTE_LIMIT]][-NOTES_KEPT:]
        while len(json.dumps(notes)) > NOTES_BYTES:  # what the store keeps (16k); oldest first out
            notes.pop(0)
        await store.set_progress(f"{key}:notes", json.dumps(notes), now)
        await store.set_progress(key, text.split("\n", 1)[0], now)

    async def send_card(self, conv: ConversationRef, card: Card) -> None:
        await self.send_text(conv, render_card_text(card))

    async def send_progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        key = self._progress_key(conv)
        if key:
            await self.runtime.store.set_progress(key, text, self.runtime.service.clock())
        return key or handle

    def can_deliver_privately(self, conv: ConversationRef | None) -> bool:
        return True  # held in the store, sealed, for the signed-in owner only

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        rt = self.runtime
        now = rt.service.clock()
        s = await rt.store.get(delivery.session_id)
        ends = s.expires_at if s else now
        # Until the session's end (a booting cloud server may push it later; teardown erases it anyway).
        lifetime = max(ends - now, timedelta(0)) + timedelta(minutes=30)
        common = dict(session_id=delivery.session_id, user=str(recipient.key), tunnel_name=delivery.tunnel_name, now=now, lifetime=lifetime)
        await one_time_configs.hold(rt.store, config=base64.b64encode(delivery.qr_png).decode(), token=self._token("png", delivery.session_id), **common)
        await one_time_configs.hold(rt.store, config=delivery.config.reveal(), token=self._token("conf", delivery.session_id), **common)
        return "Your config is ready on the web page: scan the QR code or download the file (each works once)."

    def _progress_key(self, conv: ConversationRef) -> str:
        request = conv.data.get("request") if conv.channel == self.name else None
        return f"web:{request}" if isinstance(request, str) else ""

    def _token(self, purpose: str, session_id: str) -> str:
        mac = hmac.new(self._seal_key, f"{purpose}:{session_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    # ----- middleware: CORS for the API, security headers everywhere we answer ----------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        path = request.path
        ours = path in API_PATHS or path.startswith("/api/sessions/")  # not /api/messages or /api/groupme/…
        origin = request.headers.get("Origin")
        allowed = bool(origin) and ours and origin.lower() in self.config.cors_origins
        if ours and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            if not allowed:
                return web.Response(status=403, text="origin not allowed", headers=NO_STORE)
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": "GET, POST, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            })
        resp = await handler(request)
        if ours:
            resp.headers.update(COMMON_HEADERS)
            if path != "/api/openapi.json":
                resp.headers.update(NO_STORE)
            resp.headers["Vary"] = "Origin"
            if allowed:
                resp.headers["Access-Control-Allow-Origin"] = origin
                resp.headers["Access-Control-Expose-Headers"] = "Location, Retry-After, Content-Disposition"
        return resp

    # ----- static page ------------------------------------------------------------------------------

    def _load_static(self) -> None:
        d = self.config.static_dir
        index = (d / "index.html").read_text()
        values = {
            "ENTRA_CLIENT_ID": self.config.entra_spa_client_id if self.config.entra_tenant_id else "",
            "ENTRA_AUTHORITY": f"{self.config.entra_authority}/{self.config.entra_tenant_id}" if self.config.entra_tenant_id else "",
            "ENTRA_SCOPE": self.config.api_scope if self.config.entra_tenant_id else "",
        }
        for name, value in values.items():
            index = index.replace("{{" + name + "}}", html.escape(value, quote=True))
        self._static = {
            "/": (index.encode(), "text/html"),
            "/app.js": ((d / "app.js").read_bytes(), "application/javascript"),
            "/style.css": ((d / "style.css").read_bytes(), "text/css"),
        }

    def _csp(self) -> str:
        connect = "'self'"
        if self.config.entra_tenant_id:
            connect += " " + _origin(self.config.entra_authority)
        return (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
            f"connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )

    async def _index(self, request: web.Request) -> web.Response:
        return self._serve_static("/")

    async def _asset(self, request: web.Request) -> web.Response:
        return self._serve_static(request.path)

    def _serve_static(self, path: str) -> web.Response:
        body, ctype = self._static[path]
        headers = {**COMMON_HEADERS, "Content-Security-Policy": self._csp(), "Cache-Control": "no-cache"}
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.runtime.settings.max_session_minutes))

    # ----- authentication ---------------------------------------------------------------------------

    def _authed(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            who = await self._identify(request)
            if isinstance(who, web.Response):
                return who
            role = self.runtime.access.role_of(who)
            if role is None:
                await self._audit(who, f"{request.method} {request.path}"[:60], False, "not on the allowlist")
                return web.json_response(
                    {"error": f"You are not allowed to use this VPN service. Ask an admin to add you (your id is {who.key}).", "user": str(who.key)},
                    status=403,
                )
            return await handler(request, who, role)

        return wrapped

    async def _identify(self, request: web.Request) -> Identity | web.Response:
        unauthorized = {"WWW-Authenticate": 'Bearer realm="vpn"'}
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
            return _json_error(401, "Sign in first: send Authorization: Bearer <token>.", **unauthorized)
        alg = _unverified_alg(token)
        try:
            if alg == "HS256" and self._local is not None:
                local = await self._local.verify(token)
                return Identity(UserKey("local", local.email), email=local.email, display_name=local.email)
            if alg == "RS256" and self._entra is not None:
                entra = await self._entra.verify(token)
                return Identity(UserKey("teams", entra.oid), email=entra.email, display_name=entra.name)
        except (LocalInvalid, EntraInvalid, InvalidIdentity) as exc:
            log.info("web: bearer token refused (%s)", str(exc)[:120])
        except EntraUnavailable:
            return _json_error(503, "Microsoft sign-in cannot be checked right now; try again in a minute.", **{"Retry-After": "30"})
        return _json_error(401, "The sign-in token is not valid (expired, or not for this service). Sign in again.", **unauthorized)

    async def _login(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
            return _json_error(400, 'Send {"email": "...", "password": "..."}.')
        assert self._local is not None
        try:
            token, expires_in = await self._local.login(email, password, client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self.runtime.settings.trusted_proxies))
        except TooManyAttempts as exc:
            return _json_error(429, "Too many sign-in attempts. Wait a while and try again.", **{"Retry-After": str(exc.retry_after)})
        except LoginRefused:
            return _json_error(401, "Wrong email or password.")
        finally:
            del password
        return web.json_response({"token": token, "expires_in": expires_in, "token_type": "Bearer"})

    # ----- the API ----------------------------------------------------------------------------------

    async def _me(self, request: web.Request, who: Identity, role: Role) -> web.Response:
        policy = self.runtime.service.policy
        return web.json_response({
            "user": str(who.key), "email": who.email, "name": who.display_name, "role": role.value,
            "regions": list(self.runtime.provider.regions),
            "session_minutes": policy.session_minutes, "max_session_minutes": policy.max_session_minutes,
        })

    async def _list(self, request: web.Request, who: Identity, role: Role) -> web.Response:
        service = self.runtime.service
        if role is Role.ADMIN:
            sessions = await service.live_sessions()
        else:
            sessions = await service.sessions_of(who.key)
        return web.json_response({"sessions": [await self._view(s, who, admin=role is Role.ADMIN) for s in sessions]})

    async def _start(self, request: web.Request, who: Identity, role: Role) -> web.Response:
        body = await _json_body(request, optional=True)
        if isinstance(body, web.Response):
            return body
        region, minutes, public_key = body.get("region"), body.get("minutes"), body.get("public_key")
        service = self.runtime.service
        if region is not None and (not isinstance(region, str) or region.lower() not in service.provider.regions):
            return _json_error(400, f"region must be one of: {', '.join(service.provider.regions)}")
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= service.policy.max_session_minutes):
            return _json_error(400, f"minutes must be a whole number from 1 to {service.policy.max_session_minutes}")
        if public_key is not None and (not isinstance(public_key, str) or not is_valid_key(public_key)):
            return _json_error(400, "public_key must be a WireGuard public key (44 characters of base64 ending in '=')")
        conv = ConversationRef(self.name, {"request": secrets.token_hex(12), "user": str(who.key)})
        command = "start" + (f" {region}" if region else "") + (f" {minutes}" if minutes else "") + (" key=…" if public_key else "")
        await self._audit(who, command, True, role.value)
        try:
            s = await service.start(who, conv, region=region, minutes=minutes, public_key=public_key)
        except Refused as exc:
            return _json_error(409, for_the_page(str(exc)))
        location = f"/api/sessions/{s.id}"
        return web.json_response(await self._view(s, who, admin=False), status=202, headers={"Location": location})

    async def _find(self, request: web.Request, who: Identity, role: Role, *, owner_only: bool = False) -> Session | None:
        s = await self.runtime.store.get(request.match_info["id"])
        if s is None:
            return None
        if s.owner == str(who.key) or (role is Role.ADMIN and not owner_only):
            return s
        return None

    async def _get(self, request: web.Request, who: Identity, role: Role) -> web.Response:
        s = await self._find(request, who, role)
        if s is None:
            return _json_error(404, "No such session.")
        return web.json_response(await self._view(s, who, admin=role is Role.ADMIN))

    async def _stop(self, request: web.Request, who: Identity, role: Role) -> web.Response:
        s = await self._find(request, who, role)
        if s is None:
            return _json_error(404, "No such session.")
        if s.state not in ACTIVE_STATES:
            return _json_error(409, f"Session {s.id} has already ended.")
        mine = s.owner == str(who.key)
        await self._audit(who, f"stop {s.id}", True, role.value)
        reason = "stopped by you" if mine else f"stopped by an admin ({who.label})"
        await self.runtime.service.stop([s], reason)
        s = await self.runtime.store.get(s.id) or s
        return web.json_response(await self._view(s, who, admin=role is Role.ADMIN), status=202)

    async def _extend(self, request: web.Request, who: Identity, role: Role) -> web.Response:
        s = await self._find(request, who, role)
        if s is None:
            return _json_error(404, "No such session.")
        body = await _json_body(request, optional=True)
        if isinstance(body, web.Response):
            return body
        minutes = body.get("minutes")
        if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= MAX_EXTEND):
            return _json_error(400, f"minutes must be a whole number from 1 to {MAX_EXTEND}")
        await self._audit(who, f"extend {s.id} {minutes or ''}".strip(), True, role.value)
        try:
            s = await self.runtime.service.extend(UserKey.parse(s.owner), minutes, session_id=s.id)
        except Refused as exc:
            return _json_error(409, for_the_page(str(exc)))
        return web.json_response(await self._view(s, who, admin=role is Role.ADMIN))

    async def _config(self, request: web.Request, who: Identity, role: Role) -> web.Response:
        found = await self._take(request, who, role, "conf")
        if isinstance(found, web.Response):
            return found
        claim, text = found
        # The QR holds the same secret: once the file is out, the QR is erased too.
        await self.runtime.store.consume_claim(one_time_configs.token_hash(self._token("png", claim.session_id)), self.runtime.service.clock())
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{claim.tunnel_name}.conf"', **NO_STORE},
        )

    async def _config_png(self, request: web.Request, who: Identity, role: Role) -> web.Response:
        found = await self._take(request, who, role, "png")
        if isinstance(found, web.Response):
            return found
        _, b64 = found
        return web.Response(body=base64.b64decode(b64), content_type="image/png", headers=NO_STORE)

    async def _take(self, request: web.Request, who: Identity, role: Role, purpose: str):
        s = await self._find(request, who, role, owner_only=True)  # a config is its owner's alone, admins included
        if s is None:
            return _json_error(404, "No such session.")
        rt = self.runtime
        now = rt.service.clock()
        taken = await one_time_configs.take(rt.store, self._token(purpose, s.id), now)
        if taken is not None:
            log.info("web: %s of session %s taken by its owner", "config" if purpose == "conf" else "QR", s.id)
            return taken
        held = await rt.store.get_claim(one_time_configs.token_hash(self._token(purpose, s.id)))
        if held is None and s.state in IN_FLIGHT_STATES:
            return _json_error(409, "The config is not ready yet: poll the session until config_ready is true.")
        if s.own_key:
            return _json_error(410, "This session uses your own key: there is no config to download (the peer settings are in its messages).")
        return _json_error(410, "This config was already downloaded (or the session ended). Each config is handed out once; start a new session for another.")

    async def _view(self, s: Session, who: Identity, *, admin: bool) -> dict:
        rt = self.runtime
        now = rt.service.clock()
        key = self._progress_key(s.conversation)
        progress, notes = "", []
        if key:
            progress = await rt.store.get_progress(key)
            try:
                notes = json.loads(await rt.store.get_progress(f"{key}:notes") or "[]")
            except ValueError:
                notes = []
        config_ready = False
        if s.owner == str(who.key) and s.state in ACTIVE_STATES:
            held = await rt.store.get_claim(one_time_configs.token_hash(self._token("conf", s.id)))
            config_ready = held is not None and held.state(now) is one_time_configs.ClaimState.READY
        view = {
            "id": s.id,
            "state": s.state.value,
            "progress": progress,
            "region": s.region,
            "endpoint": s.endpoint,
            "created_at": _iso(s.created_at),
            "expires_at": _iso(s.expires_at),
            "error": s.error,
            "minutes": s.minutes,
            "time_left": int(s.time_left(now)) if s.state is SessionState.READY else None,
            "config_ready": config_ready,
            "messages": notes if s.owner == str(who.key) else [],
        }
        if admin:
            view.update(owner=s.owner, owner_label=s.owner_label, cost=round(s.cost_so_far(now), 4))
        return view

    async def _audit(self, who: Identity, command: str, allowed: bool, reason: str) -> None:
        rt = self.runtime
        entry = AuditEntry(rt.service.clock(), str(who.key), who.email or "", self.name, command, allowed, reason)
        log.info("audit user=%s command=%s allowed=%s reason=%s", entry.user, command[:60], allowed, reason[:80])
        await rt.store.audit(entry)


async def _json_body(request: web.Request, *, optional: bool = False) -> dict | web.Response:
    if request.content_length is not None and request.content_length > MAX_JSON:
        return _json_error(413, "Request body too large.")
    raw = b""
    while len(raw) <= MAX_JSON:  # read(n) returns what has arrived so far, not the whole body
        piece = await request.content.read(MAX_JSON + 1 - len(raw))
        if not piece:
            break
        raw += piece
    if len(raw) > MAX_JSON:
        return _json_error(413, "Request body too large.")
    if not raw.strip():
        return {} if optional else _json_error(400, "Send a JSON object.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # 16 KiB of "[" nests deeper than json's recursion limit
        return _json_error(400, "The body is not valid JSON.")
    if not isinstance(body, dict):
        return _json_error(400, "Send a JSON object.")
    return body


_CHAT_CLAUSE = re.compile(r";\s*/vpn [^.;]*")  # "…at 23:12 UTC; /vpn stop ends it sooner."
_CHAT_SENTENCE = re.compile(r"\s*\b(?:Use|Type|You can try|Meanwhile:)\s+/vpn [^.]*\.?", re.IGNORECASE)


def for_the_page(text: str) -> str:
    """The service speaks chat ("/vpn stop ends it sooner"); the page has buttons for that instead."""
    return _CHAT_SENTENCE.sub("", _CHAT_CLAUSE.sub("", text)).strip()


def _unverified_alg(token: str) -> str:
    """The header's `alg`, to pick the verifier; each verifier pins its own algorithm again."""
    head = token.split(".", 1)[0]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,2000}", head):
        return ""
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, RecursionError):
        return ""
    alg = header.get("alg") if isinstance(header, dict) else None
    return alg if isinstance(alg, str) else ""


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
