"""The Bot Connector's REST API, on the app's own aiohttp session: the one way the bot talks to Teams.

Every call the bot makes to the Bot Connector (send, reply, update, delete, member lookup, 1:1
conversation) and the OneDrive upload goes through `ConnectorClient`, with one token cache, instead
of botbuilder's per-turn msrest clients (which cost more CPU than the whole bot; see
docs/decisions.md). One retry rule covers every call: 412/429 are retried always (refused before
processing); 500/502/503/504, timeouts and dropped connections only for calls that are safe to
repeat (GET, PUT, DELETE, creating a 1:1 chat) or that must not fail on one bad gateway (the QR
card); 403 never (the user blocked the bot); 401 once, with a new bot token. A `Retry-After` is
waited in full (jitter only adds), and one longer than `max_retry_wait` fails the call at once.

`Pacer` keeps Teams' per-conversation limits; `Sender` addresses activities to a conversation. No
lock is held while a call waits for its turn or for a retry.
"""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bot.backoff import retry_delay
from bot.channels.teams.config import TeamsConfig
from bot.messages import ConversationRef
from bot.recent import Recent

log = logging.getLogger(__name__)
RETRY_ALWAYS = frozenset({412, 429})  # refused before processing: any call may be repeated
RETRY_IF_IDEMPOTENT = frozenset({500, 502, 503, 504})  # may have been processed: only calls safe to repeat
BAD_GATEWAY = frozenset({502, 504})  # Microsoft asks bots to retry these too: a POST may then arrive twice
# Teams' limits per bot per conversation (Microsoft Learn, "Optimize your bot with rate limiting and
# best practices"): at most `n` sends in any `seconds`.
CONVERSATION_LIMITS: tuple[tuple[int, float], ...] = ((7, 1.0), (8, 2.0), (60, 30.0), (1800, 3600.0))
SEND_GAP = 0.02  # between two sends to one conversation, so they leave (and arrive) in the order they were asked
WINDOW_MARGIN = 0.1  # seconds added to each window: Teams counts arrivals, which the network can bunch up


def retry_after_seconds(value: str) -> float | None:
    """A `Retry-After` header as seconds from now: delay-seconds or an HTTP date (RFC 9110 §10.2.3);
    None when absent or unreadable. An absurd value reads as infinite (past any cap)."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


@dataclass
class _Pace:
    sent: deque[float] = field(default_factory=deque)  # send times (reserved, some in the future), oldest first
    not_before: float = 0.0  # Teams answered 429 with Retry-After: nothing goes before this
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held during one HTTP exchange only, never while waiting


class Pacer:
    """Teams' send limits per conversation (`CONVERSATION_LIMITS`: 7 per second, 8 per 2 s, 60 per
    30 s, 1,800 per hour), as a sliding window of send times. Each send reserves the earliest time
    that keeps every window within its limit (and after the conversation's previous send, so order
    holds); the caller waits for it without holding anything. Kept per process: several replicas
    each keep their own, and Teams answers 429 past the limit (retried) — see docs/decisions.md."""

    def __init__(self, size: int, limits: tuple[tuple[int, float], ...] = CONVERSATION_LIMITS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self._window = max(seconds for _, seconds in limits) + WINDOW_MARGIN
        self._keep = max(n for n, _ in limits)
        self._conversations: Recent[str, _Pace] = Recent(size)

    def _pace(self, key: str) -> _Pace:
        pace = self._conversations.get(key)
        if pace is None:
            pace = self._conversations[key] = _Pace()
        return pace

    def reserve(self, key: str, after: float = 0.0) -> float:
        """Reserve the conversation's next send, no sooner than `after` seconds: seconds to wait before it."""
        now = self.clock()
        pace = self._pace(key)
        sent = pace.sent
        while sent and sent[0] <= now - self._window:
            sent.popleft()
        at = max(now + after, pace.not_before, sent[-1] + SEND_GAP if sent else now)
        for n, seconds in self.limits:
            if len(sent) >= n:
                at = max(at, sent[-n] + seconds + WINDOW_MARGIN)
        sent.append(at)
        while len(sent) > self._keep:
            sent.popleft()
        return at - now

    def hold(self, key: str, seconds: float) -> None:
        """Teams throttled this conversation: later sends wait as well."""
        pace = self._pace(key)
        pace.not_before = max(pace.not_before, self.clock() + seconds)

    def lock(self, key: str) -> asyncio.Lock:
        return self._pace(key).lock

    def __len__(self) -> int:
        return len(self._conversations)


class ConnectorError(Exception):
    """A Bot Connector call failed: `status` 0 for a network failure or timeout. `retry_after`: Teams
    asked to wait that many seconds, longer than the bot waits (`TeamsConfig.max_retry_wait`)."""

    def __init__(self, status: int, code: str = "", message: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}".strip())
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class SendBlocked(ConnectorError):
    """403: the user blocked or removed the bot; retrying cannot help."""


class ConnectorClient:
    """The bot's outbound REST calls (Bot Connector v3 and the OneDrive upload) on one aiohttp session."""

    def __init__(self, http: aiohttp.ClientSession, token: Callable[[], Awaitable[str | None]], config: TeamsConfig,
                 forget_token: Callable[[str], None] | None = None) -> None:
        self._http = http
        self._token = token
        self._forget_token = forget_token
        self._config = config
        self._slots = asyncio.Semaphore(config.max_concurrent_calls)
        self._timeout = aiohttp.ClientTimeout(total=config.call_timeout)
        self.pacer = Pacer(config.remembered)

    async def call(self, method: str, service_url: str, path: str, *, body: Any = None, idempotent: bool,
                   pace: str | None = None, retry_bad_gateway: bool = False, encoded: str = "") -> Any:
        """One Bot Connector call. `pace`: the conversation whose send limits it counts against;
        `retry_bad_gateway`: a POST repeated after 502/504 although it may then arrive twice;
        `encoded`: more members of the `body` object, already JSON (`"key": value`)."""
        url = service_url.rstrip("/") + "/v3/" + path
        data = _json_body(body, encoded) if body is not None else None
        for renewed in (False, True):
            headers = {"Content-Type": "application/json"}
            token = await self._token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                return await self.request(method, url, data=data, headers=headers, idempotent=idempotent, pace=pace,
                                          retry_bad_gateway=retry_bad_gateway)
            except ConnectorError as exc:
                # 401: refused before processing, so safe to repeat once; the cached token may have
                # been revoked or rotated before it expired.
                if exc.status != 401 or not token or renewed or self._forget_token is None:
                    raise
                log.warning("Teams: the Bot Connector refused the bot's token (401); getting a new one")
                self._forget_token(token)
        raise AssertionError("unreachable")

    async def request(self, method: str, url: str, *, data: bytes | None, headers: dict, idempotent: bool,
                      pace: str | None = None, retry_bad_gateway: bool = False) -> Any:
        """One call under the one retry rule; returns the parsed JSON answer (None when empty)."""
        attempts = self._config.send_attempts
        delay, throttled = 0.0, False
        for attempt in range(attempts):
            if pace is None:
                await _sleep(delay)
            elif throttled:  # Teams throttles the conversation: this retry keeps its place in its line
                await _sleep(self.pacer.reserve(pace, after=delay))
            else:  # the first try, or a retry after an error: the conversation's other sends go meanwhile
                await _sleep(delay)
                await _sleep(self.pacer.reserve(pace))
            status, retry_after, failure = 0, None, None
            try:
                async with self.pacer.lock(pace) if pace is not None else contextlib.nullcontext(), self._slots:
                    async with self._http.request(method, url, data=data, headers=headers,
                                                  timeout=self._timeout) as resp:
                        raw = await resp.read()
                        status, retry_after = resp.status, retry_after_seconds(resp.headers.get("Retry-After", ""))
                        if status < 300:
                            try:
                                return json.loads(raw) if raw else None
                            except ValueError:
                                return None
                        failure = _error_of(status, raw)
            except aiohttp.ClientConnectorError:
                failure = ConnectorError(0, "ConnectionFailed")  # nothing was sent: safe to repeat
                sent = False
            except (TimeoutError, aiohttp.ClientError):
                failure = ConnectorError(0, "NoAnswer")  # it may have arrived
                sent = True
            else:
                sent = True
            assert failure is not None
            if isinstance(failure, SendBlocked):
                raise failure
            retry = (status in RETRY_ALWAYS or not sent or (idempotent and (status in RETRY_IF_IDEMPOTENT or status == 0))
                     or (retry_bad_gateway and status in BAD_GATEWAY))
            if not retry or attempt + 1 == attempts:
                raise failure
            if retry_after is not None and retry_after > self._config.max_retry_wait:
                log.warning("Teams: %s %s answered %s and asks to wait %.0fs, longer than %.0fs: giving up",
                            method, urlsplit(url).path[:60], status, retry_after, self._config.max_retry_wait)
                failure.retry_after = retry_after
                raise failure
            delay, throttled = self._retry_wait(attempt, retry_after), status == 429
            if pace is not None and throttled:
                self.pacer.hold(pace, delay)  # Teams throttles the whole conversation: its other sends wait too
            log.info("Teams: %s %s answered %s; retrying in %.1fs", method, urlsplit(url).path[:60], status or failure.code, delay)
        raise AssertionError("unreachable")

    def _retry_wait(self, attempt: int, retry_after: float | None) -> float:
        """Retry-After is a minimum (RFC 9110): waited in full, with jitter only on top, so throttled
        senders spread out without coming back early. Without one: exponential backoff with jitter."""
        if retry_after is None:
            return retry_delay(attempt, self._config.backoff)
        return retry_after + random.uniform(0, max(self._config.backoff, retry_after * 0.2))


def _json_body(body: Any, encoded: str) -> bytes:
    text = json.dumps(body)
    if encoded:  # body is a dict: its closing brace gives way to the members encoded before
        text = f"{text[:-1]}, {encoded}}}" if len(body) else f"{{{encoded}}}"
    return text.encode()


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _error_of(status: int, raw: bytes) -> ConnectorError:
    code = message = ""
    try:
        err = json.loads(raw).get("error") or {}
        code, message = str(err.get("code") or "")[:80], str(err.get("message") or "")[:200]
    except (ValueError, AttributeError):
        pass
    if status == 403 and code != "BotNotInConversationRoster":
        return SendBlocked(status, code, message)
    return ConnectorError(status, code, message)


# ----- what comes in ---------------------------------------------------------------------------------


class Sender:
    """Sends, updates and deletes activities in a conversation, within its send limits."""

    def __init__(self, client: ConnectorClient) -> None:
        self.client = client

    async def post(self, conv: ConversationRef, activity: dict, *, update_id: str | None = None,
                   retry_bad_gateway: bool = False, attachments: str = "") -> str | None:
        """Send (or update) one activity in a conversation; returns its id. `attachments`: the
        activity's attachments already as JSON (activities.py CardJson), instead of in `activity`."""
        ref = conv.data["reference"]
        service_url = ref.get("serviceUrl") or ""
        conversation_id = (ref.get("conversation") or {}).get("id") or ""
        if not service_url or not conversation_id:
            raise ConnectorError(0, "NoConversation", "the conversation reference has no service URL or id")
        activity = {
            **activity,
            "conversation": {"id": conversation_id},
            "from": ref.get("bot"),
            "recipient": ref.get("user"),
            "channelId": ref.get("channelId") or "msteams",
            "serviceUrl": service_url,
        }
        encoded = f'"attachments": {attachments}' if attachments else ""
        base = f"conversations/{quote(conversation_id, safe='')}/activities"
        try:
            if update_id:
                activity["id"] = update_id
                await self.client.call("PUT", service_url, f"{base}/{quote(update_id, safe='')}", body=activity, idempotent=True,
                                       pace=conversation_id, encoded=encoded)
                return update_id
            reply_to = ref.get("activityId")
            if reply_to:
                activity["replyToId"] = reply_to
                answer = await self.client.call("POST", service_url, f"{base}/{quote(reply_to, safe='')}", body=activity, idempotent=False,
                                                pace=conversation_id, retry_bad_gateway=retry_bad_gateway, encoded=encoded)
            else:
                answer = await self.client.call("POST", service_url, base, body=activity, idempotent=False,
                                                pace=conversation_id, retry_bad_gateway=retry_bad_gateway, encoded=encoded)
        except SendBlocked:
            log.warning("Teams: conversation %s refuses messages (403, e.g. MessageWritesBlocked); not retrying", conversation_id[:40])
            raise
        return (answer or {}).get("id") if isinstance(answer, dict) else None

    async def delete(self, conv: ConversationRef, activity_id: str) -> None:
        ref = conv.data["reference"]
        conversation_id = ref["conversation"]["id"]
        path = f"conversations/{quote(conversation_id, safe='')}/activities/{quote(activity_id, safe='')}"
        try:
            await self.client.call("DELETE", ref["serviceUrl"], path, idempotent=True, pace=conversation_id)
        except ConnectorError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise
