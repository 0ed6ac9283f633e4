"""A fake GroupMe API on 127.0.0.1: records bot posts and direct messages, serves users/me and the
group's stored messages (for re-fetch verification). Faults can be injected per endpoint.

`POST /direct_messages` de-duplicates as GroupMe documents: a `source_guid` seen within the last
minute is answered 409 (already delivered) and not delivered again; later, it is a new message.
`dm_faults` apply to the next DMs in turn: a status (e.g. 409, 502) is answered instead of storing;
"stall" and "drop" store the DM and then lose the answer ("stall": answer only after
`dm_stall_seconds`, past the client's timeout; "drop": close the connection) - the case where a
client's retry must not count as a failure.

`GET /groups/:id/messages` does what GroupMe documents: newest first, `limit` (default 20, at most
100), `before_id` / `since_id` / `after_id`, and 304 with no body when nothing matches. What GroupMe
leaves undocumented is answered adversarially, so the bot cannot come to depend on it: an id that is
not in the group gives 304, and a limit above 100 gives 400."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.loopback import serve_on_loopback


@dataclass
class FakeGroupMe:
    service_token: str = "service-token"
    users_by_token: dict[str, dict] = field(default_factory=dict)  # OAuth tokens -> /users/me
    messages: list[dict] = field(default_factory=list)  # what GroupMe stored in the group
    posts: list[dict] = field(default_factory=list)
    dms: list[dict] = field(default_factory=list)
    post_faults: list[int] = field(default_factory=list)  # statuses bots/post answers first
    message_faults: list[int] = field(default_factory=list)  # statuses groups/:id/messages answers first
    dm_faults: list[int | str] = field(default_factory=list)  # for the next DMs: a status instead, or "stall"/"drop" after storing
    dm_stall_seconds: float = 1.0
    guid_window: float = 60.0  # GroupMe: "a reused source_guid within a minute -> 409"
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._guids: dict[str, float] = {}  # source_guid -> when it was delivered (monotonic)

    async def start(self) -> "FakeGroupMe":
        app = web.Application()
        app.router.add_post("/v3/bots/post", self._bot_post)
        app.router.add_post("/v3/direct_messages", self._dm)
        app.router.add_get("/v3/users/me", self._me)
        app.router.add_get("/v3/groups/{group}/messages", self._group_messages)
        self._runner, base = await serve_on_loopback(app)
        self.base_url = f"{base}/v3"
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def post_texts(self) -> list[str]:
        return [p["text"] for p in self.posts]

    async def _bot_post(self, request: web.Request) -> web.Response:
        self.requests.append(("POST", "bots/post"))
        body = await request.json()
        if self.post_faults:
            return web.Response(status=self.post_faults.pop(0))
        assert len(body["text"]) <= 1000, "GroupMe rejects posts over 1000 characters"
        self.posts.append(body)
        return web.Response(status=202)

    async def _dm(self, request: web.Request) -> web.Response:
        self.requests.append(("POST", "direct_messages"))
        if request.headers.get("X-Access-Token") != self.service_token:
            return web.json_response({"meta": {"code": 401}}, status=401)
        dm = (await request.json())["direct_message"]
        fault = self.dm_faults.pop(0) if self.dm_faults else None
        if isinstance(fault, int):
            return web.json_response({"meta": {"code": fault}}, status=fault)
        now = time.monotonic()
        seen = self._guids.get(dm["source_guid"])
        if seen is not None and now - seen < self.guid_window:
            return web.json_response({"meta": {"code": 409, "errors": ["already sent"]}}, status=409)
        self._guids[dm["source_guid"]] = now
        self.dms.append(dm)
        if fault == "stall":
            await asyncio.sleep(self.dm_stall_seconds)  # stored; the client has given up by now
        elif fault == "drop":
            assert request.transport is not None
            request.transport.close()  # stored; the answer never leaves
        return web.json_response({"response": {"direct_message": dm}}, status=201)

    async def _me(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", "users/me"))
        user = self.users_by_token.get(request.headers.get("X-Access-Token", ""))
        if user is None:
            return web.json_response({"meta": {"code": 401}}, status=401)
        return web.json_response({"response": user})

    async def _group_messages(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", "groups/messages"))
        if request.headers.get("X-Access-Token") != self.service_token:
            return web.json_response({"meta": {"code": 401}}, status=401)
        if self.message_faults:
            return web.Response(status=self.message_faults.pop(0))
        q = request.query
        limit = int(q.get("limit", "20"))
        if not 1 <= limit <= 100:
            return web.json_response({"meta": {"code": 400, "errors": ["limit"]}}, status=400)
        group = [m for m in self.messages if m["group_id"] == request.match_info["group"]]  # oldest first
        ids = [m["id"] for m in group]
        newest_first = group[::-1]
        if "before_id" in q:
            if q["before_id"] not in ids:
                return web.Response(status=304)
            found = newest_first[newest_first.index(group[ids.index(q["before_id"])]) + 1:][:limit]
        elif "since_id" in q:
            if q["since_id"] not in ids:
                return web.Response(status=304)
            found = newest_first[: len(group) - ids.index(q["since_id"]) - 1][:limit]
        elif "after_id" in q:
            if q["after_id"] not in ids:
                return web.Response(status=304)
            found = group[ids.index(q["after_id"]) + 1:][:limit]  # chronological, as documented
        else:
            found = newest_first[:limit]
        if not found:
            return web.Response(status=304)
        return web.json_response({"response": {"count": len(group), "messages": found}})


if __name__ == "__main__":  # for bench/: the fake as its own process, reached over HTTP only
    import json
    import sys
    import time

    from tests.support.loopback import serve_until_stopped

    class _Process(FakeGroupMe):
        """`python -m tests.fakes.groupme [MESSAGES_JSON]`: the group holds MESSAGES_JSON (a list, oldest first);
        prints its base URL, then one JSON line per bot post: {"at": epoch seconds it arrived, "text": ...}."""

        async def _bot_post(self, request: web.Request) -> web.Response:
            response = await super()._bot_post(request)
            print(json.dumps({"at": time.time(), "text": self.posts[-1]["text"] if response.status == 202 else None}), flush=True)
            return response

    serve_until_stopped(_Process(messages=json.loads(sys.argv[1]) if len(sys.argv) > 1 else []).start)
