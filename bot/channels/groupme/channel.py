"""GroupMe: `/vpn` in a group, secrets only ever through a one-time link in a direct message.

GroupMe callbacks are not signed, so the route carries an unguessable secret (compared in constant
time; anything else is 404), only configured groups and real users (`sender_type == "user"`,
not system) are heard, repeated message ids are dropped, senders and groups are rate-limited (a
sender over the limit is told once), and every command is re-fetched from GroupMe with the service
account's token and must match sender and text before anything about anyone is answered. When
GroupMe cannot confirm a message, the sender is told so; a mismatch (a forgery) is dropped.
Identity is `groupme:<user_id>`, never the display name. Each group replies through its own bot.

Configs go out as claim links (see bot/one_time_configs.py): DM'd to the requester, GET shows a button
(link previews consume nothing), POST consumes the link once and shows the QR and the file.
"""
from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import logging
import os
import secrets
import re
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from bot.channels.groupme.api import GroupMeApi, GroupMeError
from bot import one_time_configs
from bot.one_time_configs import Claim, ClaimState, token_hash
from bot.chat.parser import Usage, parse
from bot.messages import ConversationRef, Identity, Incoming, InvalidIdentity, UserKey
from bot.channels.deps import ChatDeps
from bot.channels.groupme.config import GroupMeConfig
from bot.replies import ChannelDefaults, ConfigDelivery, DeliveryError
from cards import claim_page
from cards.model import Card
from cards.qr import qr_png
from cards.text import render_card_text


log = logging.getLogger(__name__)
MAX_CALLBACK_BYTES = 64 * 1024
_ID = re.compile(r"[0-9]{1,40}")
CLAIM_COOKIE = "vpn_claim"
AUTH_COOKIE = "vpn_claim_auth"


class Admission(enum.Enum):
    ALLOWED = "allowed"
    REFUSED_FIRST = "refused, tell them"  # the first refusal since the key was last allowed
    REFUSED = "refused again"  # already told: stay quiet


class RateLimit:
    """At most `limit` events per `window` seconds per key (sliding window); says when to tell once."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._events: dict[str, deque] = {}
        self._told: set[str] = set()
        self._calls = 0

    def admit(self, key: str) -> Admission:
        now = time.monotonic()
        self._calls += 1
        if self._calls % 1024 == 0:
            self._forget_idle(now)
        q = self._events.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        if len(q) >= self.limit:
            if key in self._told:
                return Admission.REFUSED
            self._told.add(key)
            return Admission.REFUSED_FIRST
        self._told.discard(key)
        q.append(now)
        return Admission.ALLOWED

    def _forget_idle(self, now: float) -> None:
        """Keys whose last event left the window: forged senders must not grow memory for ever."""
        for key in [k for k, q in self._events.items() if not q or now - q[-1] > self.window]:
            del self._events[key]
            self._told.discard(key)


class Verdict(enum.Enum):
    CONFIRMED = "confirmed"
    FORGED = "forged"  # GroupMe holds that message with another sender or text: drop quietly
    UNCONFIRMED = "unconfirmed"  # GroupMe could not confirm it: tell the sender


def _strip_mentions(text: str, attachments: list) -> str:
    """Remove @mentions GroupMe marks with loci, so '@VPN Bot /vpn start' reads '/vpn start'."""
    spans = []
    for att in attachments if isinstance(attachments, list) else []:
        if isinstance(att, dict) and att.get("type") == "mentions":
            for locus in att.get("loci") or []:
                if isinstance(locus, list) and len(locus) == 2 and all(isinstance(x, int) for x in locus):
                    spans.append(locus)
    for start, length in sorted(spans, reverse=True):
        text = text[:start] + " " + text[start + length:]
    return text.strip()


class GroupMeChannel(ChannelDefaults):
    name = "groupme"

    def __init__(self, config: GroupMeConfig) -> None:
        self.config = config
        self._deps: ChatDeps | None = None
        self._api: GroupMeApi | None = None
        self._per_user = RateLimit(config.per_user_per_minute)
        self._per_group = RateLimit(config.per_group_per_minute)
        self._cookie_key = os.urandom(32)  # per process: a restart only means logging in again

    # ----- lifecycle and routes ---------------------------------------------------------------------

    async def attach(self, deps: ChatDeps) -> None:
        self._deps = deps
        self._api = GroupMeApi(deps.http, self.config.api_url, self.config.bot_id, self.config.access_token, spacing=self.config.post_spacing)
        if not self.can_deliver_privately(None):
            log.warning(
                "GroupMe: no GROUPME_ACCESS_TOKEN/VPN_PUBLIC_URL: callbacks cannot be verified and configs cannot be "
                "delivered privately; only /vpn help is answered until an admin sets them"
            )

    @property
    def deps(self) -> ChatDeps:
        assert self._deps is not None, "GroupMe channel used before it was attached"
        return self._deps

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/groupme/{secret}", self._callback)
        app.router.add_get("/claim/oauth/callback", self._oauth_callback)
        app.router.add_get("/claim/{token:[A-Za-z0-9_-]{20,100}}", self._claim_get)
        app.router.add_post("/claim/{token:[A-Za-z0-9_-]{20,100}}", self._claim_post)

    @property
    def api(self) -> GroupMeApi:
        assert self._api is not None, "GroupMe channel used before the runtime started"
        return self._api

    # ----- Channel interface ------------------------------------------------------------------------

    def _bot(self, conv: ConversationRef | None) -> str:
        group = conv.data.get("group_id") if conv is not None else None
        return self.config.bot_for(str(group or ""))

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        await self.api.post_bot(text, self._bot(conv))

    async def send_card(self, conv: ConversationRef, card: Card) -> None:
        await self.api.post_bot(render_card_text(card), self._bot(conv))

    async def send_progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        # Posts cannot be edited: post the first step only; "ready" / "failed" follow as messages.
        if handle is None:
            await self.api.post_bot(text, self._bot(conv))
        return handle or "posted"

    def can_deliver_privately(self, conv: ConversationRef | None) -> bool:
        return bool(self.config.access_token and self.config.public_url)

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        if not self.can_deliver_privately(conv):
            raise DeliveryError("no service account is configured to send direct messages")
        deps = self.deps
        token = await one_time_configs.hold(
            deps.configs, session_id=delivery.session_id, user=str(recipient.key), tunnel_name=delivery.tunnel_name,
            config=delivery.config.reveal(), now=deps.clock(), lifetime=timedelta(minutes=self.config.claim_minutes),
        )
        link = f"{self.config.public_url}/claim/{token}"
        try:
            await self.api.direct_message(
                recipient.key.id,
                f"Your VPN config is ready: {link}\nThe link works once, within {self.config.claim_minutes} minutes. "
                "Open it on the device you will use (or next to it, to scan the QR code).",
            )
        except GroupMeError as exc:
            raise DeliveryError(f"the direct message did not go through ({exc})") from None
        return "I sent you a direct message with a one-time link to your config."

    # ----- callback ---------------------------------------------------------------------------------

    async def _callback(self, request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.match_info["secret"].encode(), self.config.callback_secret.encode()):
            raise web.HTTPNotFound()
        if request.content_length is not None and request.content_length > MAX_CALLBACK_BYTES:
            return web.Response(status=413, text="too large")
        body = await request.content.read(MAX_CALLBACK_BYTES + 1)
        if len(body) > MAX_CALLBACK_BYTES:
            return web.Response(status=413, text="too large")
        try:
            msg = json.loads(body)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except ValueError:
            log.warning("GroupMe callback: malformed JSON (%d bytes) ignored", len(body))  # never its content
            return web.Response(status=400, text="malformed JSON")
        group_id, message_id = str(msg.get("group_id") or ""), str(msg.get("id") or "")
        user_id, text = str(msg.get("user_id") or msg.get("sender_id") or ""), msg.get("text")
        if group_id not in self.config.group_ids:
            log.info("GroupMe callback for an unconfigured group ignored")
            return web.Response(status=200)
        if msg.get("sender_type") != "user" or msg.get("system") is not False:
            return web.Response(status=200)  # our own posts, other bots, system notices: no reply loops
        if not (_ID.fullmatch(user_id) and _ID.fullmatch(message_id)) or len(user_id) > 32:
            return web.Response(status=400, text="bad ids")
        if text is not None and (not isinstance(text, str) or not _encodable(text)):
            return web.Response(status=400, text="bad text")
        text = _strip_mentions(text or "", msg.get("attachments"))
        parsed = parse(text)
        if parsed is None:
            return web.Response(status=200)  # group chatter
        conv = ConversationRef("groupme", {"group_id": group_id})
        deps = self.deps
        for limiter, key, notice in (
            (self._per_group, group_id, f"This group sent more than {self.config.per_group_per_minute} commands in a minute; "
                                        "I am ignoring commands for a short while. Try again in a minute."),
            (self._per_user, user_id, f"groupme:{user_id}: you sent more than {self.config.per_user_per_minute} commands in a minute; "
                                      "I am ignoring yours for a short while. Try again in a minute."),
        ):
            admission = limiter.admit(key)
            if admission is not Admission.ALLOWED:
                log.warning("GroupMe: rate limit hit (%s); message %s dropped", "group" if limiter is self._per_group else f"groupme:{user_id}", message_id)
                if admission is Admission.REFUSED_FIRST:
                    deps.runner.start(f"groupme:limit:{key}", lambda n=notice: deps.notify(conv, n))
                return web.Response(status=200)
        deps.runner.start(f"groupme:{message_id}", lambda: self._process(conv, message_id, user_id, text, parsed))
        return web.Response(status=200)

    async def _verify(self, group_id: str, message_id: str, user_id: str, text: str) -> Verdict:
        """Is this callback a message GroupMe really holds, from that sender, with that text?"""
        not_before = self.deps.clock().timestamp() - self.config.verify_window
        try:
            stored = await self.api.find_message(group_id, message_id, not_before=not_before)
            if stored is None and self.config.verify_retry_delay >= 0:
                await asyncio.sleep(self.config.verify_retry_delay)  # a message GroupMe does not list yet
                stored = await self.api.find_message(group_id, message_id, not_before=not_before)
        except GroupMeError as exc:
            log.warning("GroupMe: could not verify message %s (%s)", message_id, exc)
            return Verdict.UNCONFIRMED
        if stored is None:
            log.warning("GroupMe: message %s is not among the group's recent messages", message_id)
            return Verdict.UNCONFIRMED
        stored_user = str(stored.get("user_id") or stored.get("sender_id") or "")
        stored_text = stored.get("text") if isinstance(stored.get("text"), str) else ""
        if stored_user != user_id or _strip_mentions(stored_text, stored.get("attachments")) != text or stored.get("sender_type", "user") != "user":
            log.warning("GroupMe: callback for message %s does not match what GroupMe stored: forged? dropped", message_id)
            return Verdict.FORGED
        return Verdict.CONFIRMED

    async def _process(self, conv: ConversationRef, message_id: str, user_id: str, text: str, parsed) -> None:
        deps = self.deps
        harmless = isinstance(parsed, Usage) or parsed.verb == "help"
        if not self.config.access_token:
            if not harmless:
                # Callbacks are unsigned: without a service account nothing can confirm who sent this.
                await deps.notify(conv, "I cannot confirm with GroupMe who sent that, so I did nothing: "
                                                "an admin needs to set up the service account (GROUPME_ACCESS_TOKEN). /vpn help still works.")
                return
        else:
            verdict = await self._verify(conv.data["group_id"], message_id, user_id, text)
            if verdict is Verdict.FORGED:
                return
            if verdict is Verdict.UNCONFIRMED:
                await deps.notify(conv, "I could not confirm that message with GroupMe, so I did nothing. "
                                                "Please send it again in a minute.")
                return
        try:
            who = Identity(UserKey("groupme", user_id))
        except InvalidIdentity:
            return
        await deps.handle(Incoming(who, text, conv, message_id=message_id, is_private=False))

    # ----- claim pages ------------------------------------------------------------------------------

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
        if not self._authorised(request, claim):
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


def _encodable(text: str) -> bool:
    """False for lone surrogates, which JSON allows and nothing downstream can store or send."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
