"""GroupMe: `/vpn` in a group, secrets only ever through a one-time link in a direct message.

GroupMe callbacks are not signed, so the route carries an unguessable secret (compared in constant
time; anything else is 404), only configured groups and real users (`sender_type == "user"`,
not system) are heard, repeated message ids are dropped, senders and groups are rate-limited (a
sender over the limit is told once), and every command is re-fetched from GroupMe with the service
account's token and must match sender and text before anything about anyone is answered. When
GroupMe cannot confirm a message, the sender is told so; a mismatch (a forgery) is dropped.
Identity is `groupme:<user_id>`, never the display name. Each group replies through its own bot.
GroupMe posts every group message here: chatter is answered 200 at a glance (chatter.py), before
the store, the task runner or GroupMe's API is touched.

Configs go out as claim links (see bot/one_time_configs.py), DM'd to the requester; the pages behind
them are in claim_pages.py, the re-fetch in verify.py, the rate limits in admission.py.
"""
from __future__ import annotations

import functools
import hmac
import json
import logging
import re
from datetime import timedelta

from aiohttp import web

from bot import one_time_configs
from bot.channels.deps import ChatDeps
from bot.channels.groupme.admission import Admission, RateLimit
from bot.channels.groupme.api import GroupMeApi, GroupMeError
from bot.channels.groupme.chatter import addressed, cannot_be_a_command, strip_mentions
from bot.channels.groupme.claim_pages import ClaimPages
from bot.channels.groupme.config import GroupMeConfig
from bot.channels.groupme.verify import Verdict, verify
from bot.chat.parser import Usage, parse
from bot.messages import ConversationRef, Identity, Incoming, InvalidIdentity, UserKey
from bot.replies import ChannelDefaults, ConfigDelivery, DeliveryError
from cards.model import Card
from cards.text import render_card_text

log = logging.getLogger(__name__)
MAX_CALLBACK_BYTES = 64 * 1024
_ID = re.compile(r"[0-9]{1,40}")


class GroupMeChannel(ChannelDefaults):
    name = "groupme"

    def __init__(self, config: GroupMeConfig) -> None:
        self.config = config
        self._deps: ChatDeps | None = None
        self._api: GroupMeApi | None = None
        self._per_user = RateLimit(config.per_user_per_minute)
        self._per_group = RateLimit(config.per_group_per_minute)
        self.claims = ClaimPages(config)  # the pages behind the links DM'd to users

    # ----- lifecycle and routes ---------------------------------------------------------------------

    async def attach(self, deps: ChatDeps) -> None:
        self._deps = deps
        self._api = GroupMeApi(deps.http, self.config.api_url, self.config.bot_id, self.config.access_token, spacing=self.config.post_spacing,
                               timeout=self.config.request_timeout)
        self.claims.attach(deps, self._api)
        if not self.can_deliver_privately(None):
            log.warning(
                "GroupMe: no GROUPME_ACCESS_TOKEN/VPN_PUBLIC_URL: callbacks cannot be verified and configs cannot be "
                "delivered privately; only /vpn help is answered until an admin sets them"
            )

    async def _notify_once(self, conv: ConversationRef, notice: str) -> None:
        await self.deps.notify(conv, notice)

    @property
    def deps(self) -> ChatDeps:
        assert self._deps is not None, "GroupMe channel used before it was attached"
        return self._deps

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/groupme/{secret}", self._callback)
        self.claims.routes(app)

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
        if cannot_be_a_command(body):
            return web.Response(status=200)  # group chatter, told from the bytes alone (chatter.py)
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
        text = strip_mentions(text or "", msg.get("attachments"))
        parsed = parse(text) if addressed(text) else None
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
                    deps.runner.start(f"groupme:limit:{key}", functools.partial(self._notify_once, conv, notice))
                return web.Response(status=200)
        deps.runner.start(f"groupme:{message_id}", lambda: self._process(conv, message_id, user_id, text, parsed))
        return web.Response(status=200)

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
            verdict = await verify(self.api, conv.data["group_id"], message_id, user_id, text,
                                   not_before=deps.clock().timestamp() - self.config.verify_window,
                                   retry_delay=self.config.verify_retry_delay)
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


def _encodable(text: str) -> bool:
    """False for lone surrogates, which JSON allows and nothing downstream can store or send."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
