"""The Bot Connector's REST API, on the app's own aiohttp session: the one way the bot talks to Teams.

Every call the bot makes to the Bot Connector (send, reply, update, delete, member lookup, 1:1
conversation) and the OneDrive upload goes through `ConnectorClient`, with one token cache, instead
of botbuilder's per-turn msrest clients (which cost more CPU than the whole bot; see
docs/decisions.md). One retry rule covers every call: 412/429 are retried always (refused before
processing); 500/502/503/504, timeouts and dropped connections only for calls that are safe to
repeat (GET, PUT, DELETE, creating a 1:1 chat); 403 never (the user blocked the bot).

`Sender` addresses activities to a conversation and paces them per conversation.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bot.backoff import retry_delay
from bot.channels.teams.config import TeamsConfig
from bot.messages import ConversationRef

log = logging.getLogger(__name__)
RETRY_ALWAYS = frozenset({412, 429})  # refused before processing: any call may be repeated
RETRY_IF_IDEMPOTENT = frozenset({500, 502, 503, 504})  # may have been processed: only calls safe to repeat
SEND_SPACING = 0.15  # Teams allows 7 sends per second per conversation


class ConnectorError(Exception):
    """A Bot Connector call failed: `status` 0 for a network failure or timeout."""

    def __init__(self, status: int, code: str = "", message: str = "") -> None:
        super().__init__(f"{status} {code}".strip())
        self.status, self.code, self.message = status, code, message


class SendBlocked(ConnectorError):
    """403: the user blocked or removed the bot; retrying cannot help."""


class ConnectorClient:
    """The bot's outbound REST calls (Bot Connector v3 and the OneDrive upload) on one aiohttp session."""

    def __init__(self, http: aiohttp.ClientSession, token: Callable[[], Awaitable[str | None]], config: TeamsConfig) -> None:
        self._http = http
        self._token = token
        self._config = config
        self._slots = asyncio.Semaphore(config.max_concurrent_calls)

    async def call(self, method: str, service_url: str, path: str, *, body: Any = None, idempotent: bool) -> Any:
        url = service_url.rstrip("/") + "/v3/" + path
        headers = {"Content-Type": "application/json"}
        token = await self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        return await self.request(method, url, data=data, headers=headers, idempotent=idempotent)

    async def request(self, method: str, url: str, *, data: bytes | None, headers: dict, idempotent: bool) -> Any:
        """One call under the one retry rule; returns the parsed JSON answer (None when empty)."""
        attempts = self._config.send_attempts
        for attempt in range(attempts):
            status, retry_after, failure = 0, "", None
            try:
                async with self._slots:
                    async with self._http.request(method, url, data=data, headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=self._config.call_timeout)) as resp:
                        raw = await resp.read()
                        status, retry_after = resp.status, resp.headers.get("Retry-After", "")
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
            retry = status in RETRY_ALWAYS or not sent or (idempotent and (status in RETRY_IF_IDEMPOTENT or status == 0))
            if not retry or attempt + 1 == attempts:
                raise failure
            delay = retry_delay(attempt, self._config.backoff, retry_after)
            log.info("Teams: %s %s answered %s; retrying in %.1fs", method, urlsplit(url).path[:60], status or failure.code, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


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
    """Sends, updates and deletes activities in one conversation after another, spaced per conversation."""

    def __init__(self, client: ConnectorClient) -> None:
        self.client = client
        self._last_send: dict[str, float] = {}
        self._send_locks: dict[str, asyncio.Lock] = {}

    async def post(self, conv: ConversationRef, activity: dict, *, update_id: str | None = None) -> str | None:
        """Send (or update) one activity in a conversation, spaced per conversation; returns its id."""
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
        base = f"conversations/{quote(conversation_id, safe='')}/activities"
        lock = self._send_locks.setdefault(conversation_id, asyncio.Lock())
        async with lock:
            wait = SEND_SPACING - (time.monotonic() - self._last_send.get(conversation_id, 0.0))
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if update_id:
                    activity["id"] = update_id
                    await self.client.call("PUT", service_url, f"{base}/{quote(update_id, safe='')}", body=activity, idempotent=True)
                    return update_id
                reply_to = ref.get("activityId")
                if reply_to:
                    activity["replyToId"] = reply_to
                    answer = await self.client.call("POST", service_url, f"{base}/{quote(reply_to, safe='')}", body=activity, idempotent=False)
                else:
                    answer = await self.client.call("POST", service_url, base, body=activity, idempotent=False)
            except SendBlocked:
                log.warning("Teams: conversation %s refuses messages (403, e.g. MessageWritesBlocked); not retrying", conversation_id[:40])
                raise
            finally:
                self._last_send[conversation_id] = time.monotonic()
        return (answer or {}).get("id") if isinstance(answer, dict) else None

    async def delete(self, conv: ConversationRef, activity_id: str) -> None:
        ref = conv.data["reference"]
        conversation_id = ref["conversation"]["id"]
        path = f"conversations/{quote(conversation_id, safe='')}/activities/{quote(activity_id, safe='')}"
        try:
            await self.client.call("DELETE", ref["serviceUrl"], path, idempotent=True)
        except ConnectorError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise
