"""The claim pages: where a GroupMe user collects a config from the one-time link DM'd to them.

GET shows only a "Reveal" button (link previews and scanners fetch links: GET consumes nothing);
POST, from the page itself, consumes the link once and shows the QR and the file. Every response is
no-store, no-referrer, with a strict CSP. Where an OAuth client id is configured, the page first
sends the user through GroupMe's implicit flow and checks `/users/me` against the requester (a
forwarded link is useless); the login is bound to the link by short-lived, path-scoped cookies.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from bot import one_time_configs
from bot.channels.deps import ChatDeps
from bot.channels.groupme.api import GroupMeApi, GroupMeError
from bot.channels.groupme.config import GroupMeConfig
from bot.one_time_configs import Claim, ClaimState, token_hash
from cards import claim_page
from cards.qr import qr_png

log = logging.getLogger(__name__)
CLAIM_COOKIE = "vpn_claim"
AUTH_COOKIE = "vpn_claim_auth"


class ClaimPages:
    def __init__(self, config: GroupMeConfig) -> None:
        self.config = config
        self._deps: ChatDeps | None = None
        self._api: GroupMeApi | None = None
        self._cookie_key = os.urandom(32)  # per process: a restart only means logging in again

    def attach(self, deps: ChatDeps, api: GroupMeApi) -> None:
        self._deps, self._api = deps, api

    @property
    def deps(self) -> ChatDeps:
        assert self._deps is not None, "GroupMe claim pages used before the channel was attached"
        return self._deps

    @property
    def api(self) -> GroupMeApi:
        assert self._api is not None, "GroupMe claim pages used before the channel was attached"
        return self._api

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/claim/oauth/callback", self._oauth_callback)
        app.router.add_get("/claim/{token:[A-Za-z0-9_-]{20,100}}", self._claim_get)
        app.router.add_post("/claim/{token:[A-Za-z0-9_-]{20,100}}", self._claim_post)

    def _respond(self, render, status: int = 200, cookies: dict[str, str] | None = None) -> web.Response:
        """`render(nonce)` -> HTML; every claim response gets no-store, no-referrer and a strict CSP."""
        nonce = secrets.token_urlsafe(12)
        resp = web.Response(text=render(nonce), status=status, content_type="text/html", charset="utf-8")
        resp.headers.update(claim_page.SECURITY_HEADERS)
        resp.headers["Content-Security-Policy"] = claim_page.csp(nonce)
        for name, value in (cookies or {}).items():
            self._set_cookie(resp, name, value)
        return resp

    def _set_cookie(self, resp: web.StreamResponse, name: str, value: str) -> None:
        """Claim cookies: this path only, not for scripts, as short-lived as the link itself."""
        secure = urlsplit(self.config.public_url).scheme == "https"
        resp.set_cookie(name, value, max_age=self.config.claim_minutes * 60, path="/claim", httponly=True, secure=secure, samesite="Lax")

    def _message(self, which: tuple[str, str], status: int) -> web.Response:
        return self._respond(lambda nonce: claim_page.message_page(which[0], which[1], nonce), status)

    def _auth_value(self, claim: Claim) -> str:
        return hmac.new(self._cookie_key, f"{claim.token_hash}|{claim.user}".encode(), hashlib.sha256).hexdigest()

    def _authorised(self, request: web.Request, claim: Claim) -> bool:
        if not self.config.oauth_client_id:
            return True
        return hmac.compare_digest(request.cookies.get(AUTH_COOKIE, ""), self._auth_value(claim))

    async def _find(self, token: str) -> Claim | None:
        return await self.deps.configs.get_claim(token_hash(token))

    async def _claim_get(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        claim = await self._find(token)
        now = self.deps.clock()
        state = claim.state(now) if claim else ClaimState.UNKNOWN
        if state is ClaimState.USED:
            return self._message(claim_page.USED, 410)
        if state is not ClaimState.READY:
            return self._message(claim_page.EXPIRED, 410 if claim else 404)
        if claim is None or not self._authorised(request, claim):
            login = f"{self.config.oauth_url}?{urlencode({'client_id': self.config.oauth_client_id})}"
            return self._respond(lambda nonce: claim_page.login_page(login, nonce), cookies={CLAIM_COOKIE: token})
        minutes = max(1, int((claim.expires_at - now).total_seconds() // 60))
        return self._respond(lambda nonce: claim_page.ready_page(f"/claim/{token}", nonce, minutes))

    async def _claim_post(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not _same_origin_post(request, self.config.public_url):
            return self._message(("Not allowed", "This form must be sent from the claim page itself."), 403)
        claim = await self._find(token)
        deps = self.deps
        now = deps.clock()
        if claim is None:
            return self._message(claim_page.EXPIRED, 404)
        if claim.state(now) is ClaimState.READY and not self._authorised(request, claim):
            return self._message(("Log in first", "Open the link again and log in with GroupMe."), 403)
        taken = await one_time_configs.take(deps.configs, token, now)
        if taken is None:
            state = (await self._find(token)).state(now)  # type: ignore[union-attr]
            return self._message(claim_page.USED if state is ClaimState.USED else claim_page.EXPIRED, 410)
        used, config = taken
        png = await asyncio.to_thread(qr_png, config)
        log.info("claim for session %s used by its owner", used.session_id)
        return self._respond(lambda nonce: claim_page.config_page(used.tunnel_name, config, png, nonce))

    async def _oauth_callback(self, request: web.Request) -> web.Response:
        """GroupMe's implicit flow lands here with ?access_token=…: use it once for /users/me, then drop it."""
        token = request.cookies.get(CLAIM_COOKIE, "")
        access_token = request.query.get("access_token", "")
        claim = await self._find(token) if token else None
        if claim is None or not access_token:
            return self._message(claim_page.EXPIRED, 400)
        try:
            me = await self.api.me(access_token)
        except GroupMeError:
            return self._message(("Login failed", "GroupMe did not confirm who you are. Open the link again to retry."), 502)
        finally:
            del access_token
        if f"groupme:{me.get('id') or me.get('user_id')}" != claim.user:
            log.warning("claim for session %s opened by another GroupMe user", claim.session_id)
            return self._message(claim_page.NOT_YOURS, 403)
        redirect = web.HTTPSeeOther(f"/claim/{token}")
        self._set_cookie(redirect, AUTH_COOKIE, self._auth_value(claim))
        redirect.headers.update(claim_page.SECURITY_HEADERS)
        raise redirect


def _same_origin_post(request: web.Request, public_url: str) -> bool:
    """Refuse cross-site form posts. Browsers send Sec-Fetch-Site; with `Referrer-Policy: no-referrer`
    Chromium sends `Origin: null` for our own form, so a null origin alone is not proof of anything."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin and origin != "null" and public_url and origin.rstrip("/") != _origin(public_url):
        return False
    return True


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
