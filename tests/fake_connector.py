"""A fake Bot Connector (the Teams side of the Bot Framework) on 127.0.0.1.

Records every call the real CloudAdapter makes — replies, proactive sends, updates (PUT), member
lookups, 1:1 conversation creation — plus file uploads to a fake OneDrive upload URL. Faults can be
injected per method and path fragment (429 then 200, 403 MessageWritesBlocked, …).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web

from tests.loopback import serve_on_loopback


@dataclass
class Call:
    method: str
    path: str
    body: dict | None
    headers: dict


@dataclass
class FakeConnector:
    members: dict[str, dict] = field(default_factory=dict)  # "29:..." -> TeamsChannelAccount JSON
    calls: list[Call] = field(default_factory=list)
    uploads: list[Call] = field(default_factory=list)
    faults: list[tuple[str, str, int, dict]] = field(default_factory=list)  # (method, path fragment, status, body)

    def __post_init__(self) -> None:
        self.base_url = ""
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    async def start(self) -> "FakeConnector":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, base = await serve_on_loopback(app)
        self.base_url = f"{base}/teams-prefix/"  # a path prefix the SDK must keep
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    # ----- views ------------------------------------------------------------------------------------
    def sent(self, conversation: str | None = None) -> list[Call]:
        """Activities posted (not updates), optionally to one conversation."""
        out = [c for c in self.calls if c.method == "POST" and "/activities" in c.path]
        return [c for c in out if conversation is None or f"/conversations/{conversation}/" in c.path]

    def updates(self) -> list[Call]:
        return [c for c in self.calls if c.method == "PUT" and "/activities/" in c.path]

    @staticmethod
    def text_of(call: Call) -> str:
        """Everything a person could read in one activity: text, card text, attachments."""
        import json

        return json.dumps(call.body or {})

    # ----- wire -------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = unquote(request.path)
        body = None
        raw = await request.read()
        if path.startswith("/upload/"):
            call = Call(request.method, path, None, dict(request.headers))
            call.body = {"bytes": raw.decode(errors="replace")}
            self.uploads.append(call)
            return web.json_response({"id": "uploaded"}, status=201)
        if raw:
            import json

            body = json.loads(raw)
        self.calls.append(Call(request.method, path, body, dict(request.headers)))
        for i, (method, fragment, status, payload) in enumerate(self.faults):
            if method == request.method and fragment in path:
                del self.faults[i]
                return web.json_response(payload, status=status)
        if not path.startswith("/teams-prefix/v3/"):
            return web.json_response({"error": {"code": "NotFound"}}, status=404)
        rest = path[len("/teams-prefix/v3/"):]
        if request.method == "POST" and rest == "conversations":
            member = body["members"][0]["id"]
            return web.json_response({"id": f"a:1personal-{member}", "activityId": "1:created", "serviceUrl": self.base_url})
        if request.method == "GET" and "/members/" in rest:
            member = rest.rsplit("/members/", 1)[1]
            found = self.members.get(member)
            if found is None:
                return web.json_response({"error": {"code": "NotFound", "message": "member"}}, status=404)
            return web.json_response(found)
        if "/activities" in rest and request.method in ("POST", "PUT"):
            return web.json_response({"id": f"1:act-{next(self._ids)}"}, status=200 if request.method == "PUT" else 201)
        return web.json_response({"error": {"code": "NotImplemented"}}, status=404)
