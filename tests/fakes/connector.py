"""A fake Bot Connector (the Teams side of the Bot Framework) on 127.0.0.1.

Records every call the bot makes — replies, proactive sends, updates (PUT), deletes, member
lookups, 1:1 conversation creation — plus file uploads to a fake OneDrive upload URL. Faults can be
injected per method and path fragment (429 then 200, 403 MessageWritesBlocked, …).

`python -m tests.fakes.connector` runs one on its own (for bench/bench_chat.py, bench_isolation.py): it prints its base
URL, and `GET /_bench/calls` / `POST /_bench/reset` read and clear what it recorded (`GET /_bench/last`:
the body of the latest activity posted; `GET /_bench/count`: how many activities were posted, cheaply).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web

from tests.support.loopback import serve_on_loopback, serve_until_stopped


@dataclass
class Call:
    method: str
    path: str
    body: dict | None
    headers: dict
    at: float = field(default_factory=time.time)
    answered_id: str = ""  # the activity id the connector gave a POST
    has_qr: bool = False  # carries a QR image (a config)
    has_consent: bool = False  # carries a file-consent card


@dataclass
class FakeConnector:
    members: dict[str, dict] = field(default_factory=dict)  # "29:..." -> TeamsChannelAccount JSON
    calls: list[Call] = field(default_factory=list)
    uploads: list[Call] = field(default_factory=list)
    faults: list[tuple[str, str, int, dict]] = field(default_factory=list)  # (method, path fragment, status, body)
    # (method, request-body fragment, status, body): e.g. ("POST", "file.consent", 502, {}) fails the consent card.
    body_faults: list[tuple[str, str, int, dict]] = field(default_factory=list)
    retry_after: str = "0"  # the Retry-After header of an injected 429
    # Unknown members "29:<x>" are answered as <x>@member_domain (the bench's many users); "" = 404.
    member_domain: str = ""
    member_tenant: str = ""  # ... in this tenant, as members (userRole "user"), when set
    # Conversations 1:1 chats cannot be opened with (the app is not installed for that member).
    not_installed: set[str] = field(default_factory=set)
    # While set and cleared, every Bot Connector call waits for it (a Teams that answers slowly).
    gate: asyncio.Event | None = None

    def __post_init__(self) -> None:
        self.base_url = ""
        self._ids = itertools.count(1)
        self._posted = 0  # activities POSTed since the last /_bench/reset
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

    def deletes(self) -> list[Call]:
        return [c for c in self.calls if c.method == "DELETE" and "/activities/" in c.path]

    @staticmethod
    def text_of(call: Call) -> str:
        """Everything a person could read in one activity: text, card text, attachments."""
        return json.dumps(call.body or {})

    def summary(self) -> list[list]:
        """Compact view for the bench: [method, path, time, has a QR image, has a file-consent card]."""
        return [[c.method, c.path, c.at, c.has_qr, c.has_consent] for c in self.calls]

    def configs(self) -> list[Call]:
        """Activities that carry a config's QR image."""
        return [c for c in self.calls if c.method == "POST" and c.has_qr]

    # ----- wire -------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = unquote(request.path)
        body = None
        raw = await request.read()
        if path.endswith("/_bench/calls"):
            return web.json_response(self.summary())
        if path.endswith("/_bench/count"):
            return web.json_response(self._posted)
        if path.endswith("/_bench/last"):  # the body of the latest activity posted (bench_chat's floor bot copies it)
            posted = [c for c in self.calls if c.method == "POST" and "/activities" in c.path]
            return web.json_response(posted[-1].body if posted else None)
        if path.endswith("/_bench/reset"):
            self.calls.clear()
            self.uploads.clear()
            self._posted = 0
            return web.json_response({})
        if path.startswith("/upload/"):
            call = Call(request.method, path, None, dict(request.headers))
            call.body = {"bytes": raw.decode(errors="replace")}
            self.uploads.append(call)
            return web.json_response({"id": "uploaded"}, status=201)
        if raw:
            body = json.loads(raw)
        self.calls.append(Call(request.method, path, body, dict(request.headers),
                               has_qr=b"data:image/png;base64," in raw, has_consent=b"file.consent" in raw))
        if self.gate is not None:
            await self.gate.wait()
        for i, (method, fragment, status, payload) in enumerate(self.faults):
            if method == request.method and fragment in path:
                del self.faults[i]
                return web.json_response(payload, status=status, headers={"Retry-After": self.retry_after} if status == 429 else None)
        for i, (method, fragment, status, payload) in enumerate(self.body_faults):
            if method == request.method and fragment.encode() in raw:
                del self.body_faults[i]
                return web.json_response(payload, status=status, headers={"Retry-After": self.retry_after} if status == 429 else None)
        if request.method == "POST" and "/activities" in path:
            self._posted += 1
        if request.method == "POST" and path.endswith("/bots/post"):
            return web.Response(status=202)  # GroupMe's bot post (bench_chat's GroupMe callbacks answer here)
        if not path.startswith("/teams-prefix/v3/"):
            return web.json_response({"error": {"code": "NotFound"}}, status=404)
        rest = path[len("/teams-prefix/v3/"):]
        if request.method == "POST" and rest == "conversations":
            # The real service answers 400 for a malformed request and 403 when the app is not
            # installed for the member (the bot may not start a chat with them).
            members = (body or {}).get("members") or []
            if not members or not isinstance(members[0], dict) or not members[0].get("id"):
                return web.json_response({"error": {"code": "BadArgument", "message": "members"}}, status=400)
            member = members[0]["id"]
            if member in self.not_installed:
                return web.json_response({"error": {"code": "Forbidden", "message": "The bot is not part of the conversation roster."}}, status=403)
            return web.json_response({"id": f"a:1personal-{member}", "activityId": "1:created", "serviceUrl": self.base_url}, status=201)
        if request.method == "GET" and "/members/" in rest:
            member = rest.rsplit("/members/", 1)[1]
            found = self.members.get(member)
            if found is None and self.member_domain and member.startswith("29:"):
                who = member[3:]
                found = {"id": member, "aadObjectId": who, "email": f"{who}@{self.member_domain}", "userPrincipalName": f"{who}@{self.member_domain}"}
                if self.member_tenant:
                    found.update(tenantId=self.member_tenant, userRole="user")
            if found is None:
                return web.json_response({"error": {"code": "NotFound", "message": "member"}}, status=404)
            return web.json_response(found)
        if "/activities" in rest and request.method in ("POST", "PUT"):
            new_id = f"1:act-{next(self._ids)}"
            if request.method == "POST":
                self.calls[-1].answered_id = new_id
            return web.json_response({"id": new_id}, status=200 if request.method == "PUT" else 201)
        if "/activities/" in rest and request.method == "DELETE":
            return web.Response(status=200)
        return web.json_response({"error": {"code": "NotImplemented"}}, status=404)


if __name__ == "__main__":  # for bench/: see the module's docstring
    serve_until_stopped(lambda: FakeConnector(member_domain="contoso.com").start())
