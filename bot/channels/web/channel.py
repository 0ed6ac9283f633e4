"""The web page and HTTP API as a channel of the same engine: what the engine says to a web request
lands in the store (progress line, notes, held configs), so any replica can answer the next poll.

The routes are built here and registered on the app; `attach` hands them their dependencies:
the API (bot/channels/web/api.py), sign-in (signin.py), the page and its headers (page.py).
"""
from __future__ import annotations

import json
from datetime import timedelta

from aiohttp import web

from bot.channels.web.api import WebApi, progress_key
from bot.channels.web.config import WebConfig
from bot.channels.web.deps import WebDeps
from bot.channels.web.held_configs import HeldConfigs
from bot.channels.web.page import ApiHeaders, Page
from bot.channels.web.signin import SignIn
from bot.messages import ConversationRef, Identity
from bot.replies import ChannelDefaults, ConfigDelivery
from cards.model import Card
from cards.text import render_card_text

NOTES_KEPT = 12
NOTE_LIMIT = 2000
NOTES_BYTES = 15_000


class WebChannel(ChannelDefaults):
    name = "web"
    speaks_commands = False  # the page has buttons: the engine's notices arrive in their page register

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.held = HeldConfigs(config.local_secret)
        self.signin = SignIn(config)
        self.page = Page(config)
        self.api = WebApi(config, self.held, self.signin, ApiHeaders(config))
        self._deps: WebDeps | None = None

    async def attach(self, deps: WebDeps) -> None:
        self._deps = deps
        self.signin.attach(deps)
        self.api.attach(deps)
        self.page.load()

    @property
    def deps(self) -> WebDeps:
        assert self._deps is not None, "web channel used before it was attached"
        return self._deps

    def routes(self, app: web.Application) -> None:
        self.page.register(app)
        self.api.register(app)

    # ----- Channel interface: everything lands in the store, keyed by the request ------------------

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        key = progress_key(conv)
        if not key:
            return
        store, now = self.deps.progress, self.deps.clock()
        try:
            notes = json.loads(await store.get_progress(f"{key}:notes") or "[]")
        except ValueError:
            notes = []
        notes = [*notes, text[:NOTE_LIMIT]][-NOTES_KEPT:]
        while len(json.dumps(notes)) > NOTES_BYTES:  # what the store keeps (16k); oldest first out
            notes.pop(0)
        await store.set_progress(f"{key}:notes", json.dumps(notes), now)
        await store.set_progress(key, text.split("\n", 1)[0], now)

    async def send_card(self, conv: ConversationRef, card: Card) -> None:
        await self.send_text(conv, render_card_text(card))

    async def send_progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        key = progress_key(conv)
        if key:
            await self.deps.progress.set_progress(key, text, self.deps.clock())
        return key or handle

    def can_deliver_privately(self, conv: ConversationRef | None) -> bool:
        return True  # held in the store, sealed, for the signed-in owner only

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        deps = self.deps
        now = deps.clock()
        s = await deps.sessions.get(delivery.session_id)
        ends = s.expires_at if s else now
        # Until the session's end (a booting cloud server may push it later; teardown erases it anyway).
        lifetime = max(ends - now, timedelta(0)) + timedelta(minutes=30)
        await self.held.hold(
            deps.configs, session_id=delivery.session_id, attempt=s.attempts if s else 0, user=str(recipient.key),
            tunnel_name=delivery.tunnel_name, config=delivery.config.reveal(), qr_png=delivery.qr_png, now=now, lifetime=lifetime,
        )
        if s is not None and s.attempts > 1:
            return "The bot restarted while setting up your VPN, so this is a new config (the earlier one will not work): scan the QR code or download the file (each works once)."
        return "Your config is ready on the web page: scan the QR code or download the file (each works once)."
