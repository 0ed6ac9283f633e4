"""The HTTP API (OpenAPI at /api/openapi.json): a thin adapter over the engine.

Each route checks the shape of its input, asks the same policy the chat dispatcher asks (allowlist,
rules, audit), calls the engine's use case, and renders a refusal in the API's words
(bot/channels/web/refusals.py). No rule about who may do what lives here.
"""
from __future__ import annotations

import base64
import json
import logging
import secrets
from datetime import datetime
from typing import Any, Awaitable, Callable

from aiohttp import web

from bot.channels.web import refusals, usage_api
from bot.channels.web.body import json_body, json_error
from bot.channels.web.config import WebConfig
from bot.channels.web.deps import WebDeps
from bot.channels.web.held_configs import CONF, PNG, HeldConfigs
from bot.channels.web.openapi import openapi_document
from bot.channels.web.page import NO_STORE, ApiHeaders
from bot.channels.web.signin import SignIn
from bot.engine import notices
from bot.engine.policy import MAX_EXTEND_INPUT, MAX_REASON, Action, Actor, Limits, Refused
from bot.logs import bind
from bot.messages import ConversationRef
from bot.one_time_configs import ClaimState
from bot.store.model import ACTIVE_STATES, IN_FLIGHT_STATES, Session, SessionState
from provisioner.wireguard import is_valid_key

log = logging.getLogger(__name__)
SESSION_ID = r"[0-9a-f]{10}"
CHANNEL = "web"
Handler = Callable[[web.Request, Actor], Awaitable[web.StreamResponse]]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


def progress_key(conv: ConversationRef) -> str:
    """Where a web request's progress line and notes live in the progress store ("" for other channels)."""
    request = conv.data.get("request") if conv.channel == CHANNEL else None
    return f"web:{request}" if isinstance(request, str) else ""


def _refused(r: Refused) -> web.Response:
    status = refusals.status_of(r)
    return web.json_response(refusals.body(r), status=status, headers={"Retry-After": "30"} if status == 503 else None)


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


class WebApi:
    def __init__(self, config: WebConfig, held: HeldConfigs, signin: SignIn, headers: ApiHeaders) -> None:
        self.config = config
        self.held = held
        self.signin = signin
        self.headers = headers
        self._deps: WebDeps | None = None

    def attach(self, deps: WebDeps) -> None:
        self._deps = deps

    @property
    def deps(self) -> WebDeps:
        assert self._deps is not None, "web API used before it was attached"
        return self._deps

    def register(self, app: web.Application) -> None:
        r, h = app.router, self.headers
        sid = f"{{id:{SESSION_ID}}}"
        routes: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/api/openapi.json", h.route(self._openapi, cacheable=True)),
            ("POST", "/api/login", h.route(self.signin.login)),
            ("GET", "/api/me", h.route(self._authed(Action.VIEW, self._me))),
            ("GET", "/api/sessions", h.route(self._authed(Action.VIEW, self._list))),
            ("POST", "/api/sessions", h.route(self._authed(Action.START, self._start))),
            ("GET", f"/api/sessions/{sid}", h.route(self._authed(Action.VIEW, self._get))),
            ("DELETE", f"/api/sessions/{sid}", h.route(self._authed(Action.STOP, self._stop))),
            ("POST", f"/api/sessions/{sid}/extend", h.route(self._authed(Action.EXTEND, self._extend))),
            ("POST", f"/api/sessions/{sid}/approve", h.route(self._authed(Action.APPROVE, self._approve))),
            ("POST", f"/api/sessions/{sid}/deny", h.route(self._authed(Action.DENY, self._deny))),
            ("GET", f"/api/sessions/{sid}/config", h.route(self._authed(Action.TAKE_CONFIG, self._config))),
            ("GET", f"/api/sessions/{sid}/config.png", h.route(self._authed(Action.TAKE_CONFIG, self._config_png))),
            ("GET", "/api/usage", h.route(self._authed(Action.REPORT, lambda rq, a: usage_api.usage(rq, a, self.deps)))),
            ("GET", "/api/audit", h.route(self._authed(Action.AUDIT, lambda rq, a: usage_api.audit(rq, a, self.deps)))),
        ]
        preflighted: set[str] = set()
        for method, path, handler in routes:
            # No HEAD on GETs: it would run the handler and spend the once-only config on a body nobody receives.
            r.add_route(method, path, handler) if method != "GET" else r.add_get(path, handler, allow_head=False)
            if path not in preflighted:
                preflighted.add(path)
                r.add_route("OPTIONS", path, self.headers.preflight)

    # ----- the one door: sign-in, then the policy ----------------------------------------------------

    def _authed(self, action: Action, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            who = await self.signin.identify(request)
            if isinstance(who, web.Response):
                return who
            bind(user=str(who.key))  # the JSON log lines of this request name who made it
            try:
                route = request.match_info.route.resource
                # The route, not the path: a stranger probing ids is one audit row an hour, not one per id.
                actor = await self.deps.policy.admit(who, CHANNEL, f"{request.method} {route.canonical if route else request.path}"[:60])
                if action is Action.VIEW or action is Action.TAKE_CONFIG:
                    await self.deps.policy.authorize(actor, action, action.value)  # not audited (polled)
                return await handler(request, actor)
            except Refused as r:
                return _refused(r)

        return wrapped

    # ----- routes ------------------------------------------------------------------------------------

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self.deps.limits.max_session_minutes))

    async def _me(self, request: web.Request, actor: Actor) -> web.Response:
        who, engine = actor.identity, self.deps.engine
        mine: Limits = await engine.limits_for(actor)
        return web.json_response({
            "user": actor.key, "email": who.email, "name": who.display_name, "role": actor.role.value,
            "regions": list(mine.regions),  # this person's own limits (their access policy entry, else the defaults)
            "session_minutes": mine.default_minutes, "max_session_minutes": mine.max_minutes,
            "approval": str(mine.approval), "policy": mine.entry,
            "approver": await self.deps.policy.is_approver(actor),
        })

    async def _list(self, request: web.Request, actor: Actor) -> web.Response:
        engine = self.deps.engine
        state = request.query.get("state")
        if state is None:
            sessions = await engine.visible_sessions(actor)
            return web.json_response({"sessions": [await self._view(s, actor) for s in sessions]})
        if state not in {st.value for st in ACTIVE_STATES}:
            return json_error(400, f"state must be one of: {', '.join(st.value for st in ACTIVE_STATES)}")
        sessions = [s for s in await engine.visible_sessions(actor) if s.state.value == state]
        decidable: set[str] = set()
        if state == SessionState.AWAITING_APPROVAL.value:  # approvers: every request they may decide
            for s in await engine.pending(actor):
                decidable.add(s.id)
                if all(s.id != v.id for v in sessions):
                    sessions.append(s)
        return web.json_response({"sessions": [await self._view(s, actor, decider=s.id in decidable) for s in sessions]})

    async def _start(self, request: web.Request, actor: Actor) -> web.Response:
        body = await json_body(request, optional=True)
        if isinstance(body, web.Response):
            return body
        region, minutes, public_key, reason = body.get("region"), body.get("minutes"), body.get("public_key"), body.get("reason")
        if region is not None and not isinstance(region, str):
            return json_error(400, f"region must be one of: {', '.join(self.deps.regions)}")
        if minutes is not None and not _whole(minutes, 1, MAX_EXTEND_INPUT):  # the person's own maximum is the engine's
            return json_error(400, f"minutes must be a whole number from 1 to {MAX_EXTEND_INPUT}")
        if public_key is not None and (not isinstance(public_key, str) or not is_valid_key(public_key)):
            return json_error(400, "public_key must be a WireGuard public key (44 characters of base64 ending in '=')")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            return json_error(400, f"reason must be text of at most {MAX_REASON} characters")
        command = "start" + (f" {region}" if region else "") + (f" {minutes}" if minutes else "") + (" key=…" if public_key else "")
        await self.deps.policy.authorize(actor, Action.START, command)
        conv = ConversationRef(CHANNEL, {"request": secrets.token_hex(12), "user": actor.key})
        s = await self.deps.engine.start(actor, conv, region=region, minutes=minutes, public_key=public_key, reason=" ".join((reason or "").split()))
        return web.json_response(await self._view(s, actor), status=202, headers={"Location": f"/api/sessions/{s.id}"})

    async def _approve(self, request: web.Request, actor: Actor) -> web.Response:
        body = await json_body(request, optional=True)
        if isinstance(body, web.Response):
            return body
        minutes, sid = body.get("minutes"), request.match_info["id"]
        if minutes is not None and not _whole(minutes, 1, MAX_EXTEND_INPUT):
            return json_error(400, f"minutes must be a whole number from 1 to {MAX_EXTEND_INPUT} (at most what was asked)")
        await self.deps.policy.authorize(actor, Action.APPROVE, f"approve {sid} {minutes or ''}".strip())
        s = await self.deps.engine.approve(actor, sid, minutes)
        return web.json_response(await self._view(s, actor, decider=True))

    async def _deny(self, request: web.Request, actor: Actor) -> web.Response:
        body = await json_body(request, optional=True)
        if isinstance(body, web.Response):
            return body
        reason, sid = body.get("reason", ""), request.match_info["id"]
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            return json_error(400, f"reason must be text of at most {MAX_REASON} characters")
        await self.deps.policy.authorize(actor, Action.DENY, f"deny {sid}")
        s = await self.deps.engine.deny(actor, sid, reason)
        return web.json_response(await self._view(s, actor, decider=True))

    async def _get(self, request: web.Request, actor: Actor) -> web.Response:
        s = await self.deps.engine.session_for(actor, request.match_info["id"], Action.VIEW)
        return web.json_response(await self._view(s, actor))

    async def _stop(self, request: web.Request, actor: Actor) -> web.Response:
        engine = self.deps.engine
        s = await engine.session_for(actor, request.match_info["id"], Action.STOP)
        await self.deps.policy.authorize(actor, Action.STOP, f"stop {s.id}")
        await engine.stop(actor, s.id)
        s = await engine.session_for(actor, s.id, Action.VIEW)
        return web.json_response(await self._view(s, actor), status=202)

    async def _extend(self, request: web.Request, actor: Actor) -> web.Response:
        engine = self.deps.engine
        s = await engine.session_for(actor, request.match_info["id"], Action.EXTEND)
        body = await json_body(request, optional=True)
        if isinstance(body, web.Response):
            return body
        minutes = body.get("minutes")
        if minutes is not None and not _whole(minutes, 1, MAX_EXTEND_INPUT):
            return json_error(400, f"minutes must be a whole number from 1 to {MAX_EXTEND_INPUT}")
        await self.deps.policy.authorize(actor, Action.EXTEND, f"extend {s.id} {minutes or ''}".strip())
        s = await engine.extend(actor, minutes, session_id=s.id)
        return web.json_response(await self._view(s, actor))

    async def _config(self, request: web.Request, actor: Actor) -> web.Response:
        found = await self._take(request, actor, CONF)
        if isinstance(found, web.Response):
            return found
        claim, text = found
        return web.Response(
            text=text, content_type="text/plain", charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{claim.tunnel_name}.conf"', **NO_STORE},
        )

    async def _config_png(self, request: web.Request, actor: Actor) -> web.Response:
        found = await self._take(request, actor, PNG)
        if isinstance(found, web.Response):
            return found
        return web.Response(body=base64.b64decode(found[1]), content_type="image/png", headers=NO_STORE)

    async def _take(self, request: web.Request, actor: Actor, purpose: str) -> tuple[Any, str] | web.Response:
        s = await self.deps.engine.session_for(actor, request.match_info["id"], Action.TAKE_CONFIG)
        taken = await self.held.take(self.deps.configs, purpose, s.id, s.attempts, self.deps.clock())
        if taken is not None:
            log.info("web: %s of session %s taken by its owner", "config" if purpose == CONF else "QR", s.id)
            return taken
        held = await self.held.held(self.deps.configs, purpose, s.id, s.attempts)
        if held is None and s.state in IN_FLIGHT_STATES:
            return json_error(409, "The config is not ready yet: poll the session until config_ready is true.")
        if s.own_key:
            return json_error(410, "This session uses your own key: there is no config to download (the peer settings are in its messages).")
        return json_error(410, "This config was already downloaded (or the session ended). Each config is handed out once; start a new session for another.")

    async def _view(self, s: Session, actor: Actor, *, decider: bool = False) -> dict[str, Any]:
        deps = self.deps
        now = deps.clock()
        key = progress_key(s.conversation)
        progress, notes = "", []
        if key:
            progress = await deps.progress.get_progress(key)
            try:
                notes = json.loads(await deps.progress.get_progress(f"{key}:notes") or "[]")
            except ValueError:
                notes = []
        mine = s.owner == actor.key
        config_ready = False
        if mine and s.state in ACTIVE_STATES:
            held = await self.held.held(deps.configs, CONF, s.id, s.attempts)
            config_ready = held is not None and held.state(now) is ClaimState.READY
        view: dict[str, Any] = {
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
            "messages": notes if mine else [],
            "reason": s.reason,  # the requester's, for the approvers
            "decided_by": s.decided_by,
            "end_reason": s.end_reason,  # why it ended, or why it was not granted
            "decide_by": _iso(s.decide_by),
            "asked": s.asked if mine or actor.is_admin else "",
            # Live traffic (issue 23): the owner's and admins' own view of the tunnel.
            "tunnel": notices.traffic_line(s, now) if mine or actor.is_admin else "",
            "handshake_at": _iso(s.handshake_at) if mine or actor.is_admin else None,
            "bytes_in": s.bytes_in if mine or actor.is_admin else 0,
            "bytes_out": s.bytes_out if mine or actor.is_admin else 0,
        }
        if decider:  # an approver sees who asks
            view.update(owner_label=s.owner_label)
        if actor.is_admin:
            view.update(owner=s.owner, owner_label=s.owner_label, cost=round(s.cost_so_far(now), 4))
        return view
