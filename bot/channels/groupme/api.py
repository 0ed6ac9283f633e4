"""A thin async client for the few GroupMe calls the bot makes, on the service's aiohttp session.

Bot posts (≤1000 characters each: longer replies are split and spaced so they arrive in order),
direct messages from the service account (a fresh `source_guid` each, kept across retries),
`users/me`, and re-fetching a group message to verify a callback. 420/429/5xx and lost answers
are retried with backoff and jitter; 304 is GroupMe's "no messages", not an error; 409 to a retried
direct message is GroupMe recognising the `source_guid` of one it already delivered: sent. Tokens travel only in the `X-Access-Token` header and are
never logged.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import aiohttp

from bot.backoff import retry_delay

log = logging.getLogger(__name__)
MAX_TEXT = 1000
RETRY_STATUSES = {420, 429, 500, 502, 503, 504}


class GroupMeError(Exception):
    pass


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Chunks of at most `limit` characters, broken at line ends where possible, in order."""
    chunks: list[str] = []
    current = ""
    for line in text.split("\n"):
        while len(line) > limit:  # one very long line: hard split
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:limit])
            line = line[limit:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            chunks.append(current)
            current = line
        else:
            current = candidate
    if current or not chunks:
        chunks.append(current)
    return chunks


def _created_at(msg: dict) -> float:
    value = msg.get("created_at")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("-inf")


class GroupMeApi:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        bot_id: str,
        access_token: str = "",
        *,
        spacing: float = 0.4,
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: float = 15.0,
    ) -> None:
        self._http = session
        self._base = base_url.rstrip("/")
        self._bot_id = bot_id
        self._token = access_token
        self._spacing = spacing
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._post_locks: dict[str, asyncio.Lock] = {}  # per bot: chunks of one reply must not interleave

    async def post_bot(self, text: str, bot_id: str | None = None) -> None:
        bot_id = bot_id or self._bot_id
        async with self._post_locks.setdefault(bot_id, asyncio.Lock()):
            for i, chunk in enumerate(split_text(text)):
                if i:
                    await asyncio.sleep(self._spacing)
                await self._request("POST", "/bots/post", json={"bot_id": bot_id, "text": chunk})

    async def direct_message(self, user_id: str, text: str) -> None:
        if not self._token:
            raise GroupMeError("no service-account token (GROUPME_ACCESS_TOKEN) to send direct messages with")
        for chunk in split_text(text):
            body = {"direct_message": {"source_guid": str(uuid.uuid4()), "recipient_id": user_id, "text": chunk, "attachments": []}}
            await self._request("POST", "/direct_messages", json=body, token=self._token, sent_on_retry=409)

    async def me(self, token: str) -> dict:
        data = await self._request("GET", "/users/me", token=token)
        return (data or {}).get("response") or {}

    async def find_message(self, group_id: str, message_id: str, *, not_before: float, max_pages: int = 5) -> dict | None:
        """The group message with that id as GroupMe stored it (service account's view), or None.

        Only documented behaviour: the newest page first, then `before_id` (an id GroupMe just
        returned, so it exists) page by page while the page still reaches back to `not_before`
        (Unix seconds). 304 means "no (more) messages"."""
        if not self._token:
            raise GroupMeError("no service-account token (GROUPME_ACCESS_TOKEN) to read messages with")
        params = {"limit": "100"}
        for _ in range(max_pages):
            data = await self._request("GET", f"/groups/{group_id}/messages", params=params, token=self._token)
            response = data.get("response") if isinstance(data, dict) else None
            messages = response.get("messages") if isinstance(response, dict) else None
            if not isinstance(messages, list) or not messages:
                return None
            oldest = None
            for msg in messages:
                if not isinstance(msg, dict):
                    continue
                if str(msg.get("id")) == message_id:
                    return msg if _created_at(msg) >= not_before else None  # an old message replayed
                oldest = msg
            if oldest is None or not _created_at(oldest) >= not_before or len(messages) < int(params["limit"]):
                return None
            params = {"limit": "100", "before_id": str(oldest.get("id"))}
        return None

    async def _request(self, method: str, path: str, *, json: Any = None, params: dict | None = None, token: str | None = None,
                       sent_on_retry: int | None = None) -> Any:
        """`sent_on_retry`: the status that, answering a retry, says an earlier attempt got through."""
        headers = {"X-Access-Token": token} if token else {}
        for attempt in range(self._attempts):
            try:
                async with self._http.request(method, self._base + path, json=json, params=params, headers=headers,
                                              timeout=self._timeout) as resp:
                    if resp.status == 304:  # GroupMe's answer when no message matches
                        return None
                    if attempt and resp.status == sent_on_retry:
                        log.info("GroupMe %s %s answered %d to a retry: an earlier attempt was delivered", method, path, resp.status)
                        return None
                    if 200 <= resp.status < 300:
                        if resp.content_type != "application/json":
                            return None
                        try:
                            return await resp.json()
                        except ValueError:
                            raise GroupMeError(f"GroupMe {method} {path} answered malformed JSON") from None
                    if resp.status not in RETRY_STATUSES or attempt + 1 == self._attempts:
                        raise GroupMeError(f"GroupMe {method} {path} answered {resp.status}")
                    retry_after = resp.headers.get("Retry-After", "")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if attempt + 1 == self._attempts:
                    raise GroupMeError(f"GroupMe {method} {path} failed: {type(exc).__name__}") from None
                retry_after = ""
            await asyncio.sleep(retry_delay(attempt, self._backoff, retry_after))
        raise GroupMeError(f"GroupMe {method} {path}: out of attempts")
