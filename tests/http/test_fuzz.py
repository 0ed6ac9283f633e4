"""Property-based HTTP fuzzing of the whole service, as `serve` composes it (issue 9, "Both").

The app runs on 127.0.0.1 in a thread of its own, with Teams and GroupMe wired from the
environment exactly as `app.py serve` wires them, in production mode (Teams authentication on) and
in dev mode (off), on SQLite and on Table Storage (Azurite; fewer examples there: every request is a
few round trips to it). Hypothesis sends every route — found in the router, so routes added later are
fuzzed too — random JSON shapes, wrong types, deep nesting, lone surrogates, invalid UTF-8, huge
bodies, every method and forged auth headers. Properties: no 5xx (501 for invoke names the Teams
SDK does not handle aside), no traceback in a body or in the log, nothing provisioned for anyone
not on the allowlist, and /healthz still answers.

Nothing leaves the machine: every serviceUrl is the fake connector's, forged tokens never name an
issuer whose keys the SDK would download, and HTTPS_PROXY points at a closed loopback port as a
safety net for anything that still tried.
"""
from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import logging
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bot.channels.web.signin_local import LocalAuth, hash_password
from bot.settings import Settings
from bot.store.model import SessionState
from bot.store.ports import LocalUser
from bot.wiring import Runtime, build_http_app, make_channels, make_provider
from tests.fakes.connector import FakeConnector
from tests.fakes.groupme import FakeGroupMe

SECRET = "fuzz-secret-0123456789"
LOCAL_SECRET = "fuzz-local-auth-secret-0123456789abcdef"
GROUP = "4242"
ALICE_AAD = "00000000-0000-0000-0000-00000000a11c"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP_ID = "11111111-2222-3333-4444-555555555555"
WEB_USER = "fuzz@example.org"  # a local account: only the compressed-garbage test knows its password
ALLOWED = {f"teams:{ALICE_AAD}", "groupme:111", f"local:{WEB_USER}"}
EXAMPLES_PER_MODE = int(os.environ.get("FUZZ_EXAMPLES", "2500"))  # x 2 modes: the issue asks for at least 5,000 cases
EXAMPLES_PER_MODE_ON_TABLES = int(os.environ.get("FUZZ_EXAMPLES_TABLES", "600"))  # issue 18: both stores, the file within ~2 minutes
# Issue 18 item 6: identities past Table Storage's key limits once escaped (up to 6 characters each).
LONG_SLASHES = "/" * 242 + "@example.org"  # 254 characters, the longest address: 726 once escaped
LONG_EMOJI = "\U0001F600" * 242 + "@example.org"  # 254 characters, 980 UTF-8 bytes
ALLOWED |= {f"local:{LONG_SLASHES}"}  # LONG_EMOJI signs in but is not allowed: refused, and audited under its identity
# Accounts with those identities (and two that are no addresses at all, as a row written before the
# checks might be): put straight into the store when the app starts; their tokens sign every kind of request.
LONG_ACCOUNTS = [LONG_SLASHES, LONG_EMOJI, "/" * 256, "\U0001F600" * 256]
LONG_PASSWORD = "long-identity-password"
LONG_HASH = hash_password(LONG_PASSWORD, iterations=1000)
# The issue's logins, kept apart from the fuzz's (below) so that its attempts leave these counters alone.
LONG_LOGINS = ["/" * 200 + "@example.org", "\u0080" * 100 + "@example.org", "\U0001F600" * 249, "\U0001F600" * 249 + "@example.org", "/" * 300 + "@example.org"]
FUZZ_LOGINS = [e.replace("@example.org", "@example.net") for e in LONG_LOGINS]
LONG_MESSAGE_IDS = ["/" * 256, "/" * 300, "m" * 256 + "A" * 44, "m" * 256 + "B" * 44, "\U0001F600" * 256, "#?\\" * 100]


def _long_token(email: str) -> str:
    """A local-account token as a sign-in would issue it (the signing key derives from LOCAL_SECRET)."""
    now = datetime.now(timezone.utc)
    return LocalAuth(LOCAL_SECRET, None, lambda: now).issue(LocalUser(email, LONG_HASH, now), now)


LONG_TOKENS = [_long_token(e) for e in LONG_ACCOUNTS] + [_long_token("/" * 255 + "x")]  # the last one's account does not exist
# Findings outside this test's reach, reported as warnings instead of failing: delete an entry once
# fixed. (The Teams turn failures this test first found, a missing `recipient` or `conversation`,
# are fixed in bot/channels/teams/channel.py's check_activity and now fail the test if they come back.)
KNOWN_ELSEWHERE = [
    # Seen once in ~20,000 dev-mode cases, cause not pinned down: a proactive reply to a fuzzed
    # conversation failed and bot/replies.py logged it with a traceback (its log.exception).
    ("bot.replies: sending a", "to teams failed"),
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "X-FOO"]
COMPRESSIONS = ["gzip", "deflate", "br"]


# ----- the app under test, on loopback in its own thread -------------------------------------------------


class LogTap(logging.Handler):
    """Every record the app logs during the run: tracebacks are findings too. Only the app's: records
    from its own thread or its own loggers, never a neighbouring test's leftovers (a browser test that
    failed earlier once leaked a BrokenPipeError into the root logger, and this test blamed the app)."""

    OURS = ("bot", "provisioner", "cards", "app")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.app_thread: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.app_thread or record.name.split(".")[0] in self.OURS:
            self.records.append(record)


@dataclass
class Served:
    mode: str
    port: int
    connector: FakeConnector
    loop: asyncio.AbstractEventLoop
    runtime: Runtime
    app: object
    store: str = "sqlite"

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def _serve(mode: str, store_env: dict[str, str], data_dir: Path, ready: threading.Event, box: dict, stop: threading.Event) -> None:
    from aiohttp import web

    async def main() -> None:
        connector = await FakeConnector(members={}).start()
        gm = await FakeGroupMe().start()
        probe = web.AppRunner(web.Application())
        await probe.setup()
        site = web.TCPSite(probe, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - reserve a port, then reuse it
        await probe.cleanup()
        env = {
            "VPN_DATA_DIR": str(data_dir), "VPN_USERS": ",".join(sorted(ALLOWED)), "VPN_DRYRUN_STEP_SECONDS": "0",
            "VPN_PUBLIC_URL": f"http://127.0.0.1:{port}", "VPN_MAX_SESSIONS": "1000",
            "GROUPME_BOT_ID": "bot-1", "GROUPME_GROUP_ID": GROUP, "GROUPME_CALLBACK_SECRET": SECRET,
            "GROUPME_ACCESS_TOKEN": "service-token", "GROUPME_API_URL": gm.base_url,
            "GROUPME_USER_PER_MINUTE": "1000", "GROUPME_GROUP_PER_MINUTE": "10000",
            "VPN_LOCAL_AUTH_SECRET": LOCAL_SECRET,  # the web page and API too (no Entra: no network)
            "VPN_TRUSTED_PROXIES": "1",  # the fuzz's long logins come "from" many addresses: 127.0.0.1's sign-in limit stays for the tests after it
            **store_env,
        }
        if mode == "production":
            env.update({"MicrosoftAppId": APP_ID, "MicrosoftAppPassword": "secret", "MicrosoftAppTenantId": TENANT})
        else:
            env["VPN_DEV_MODE"] = "1"
        settings = Settings.from_env(env)
        settings.ops.data_dir.mkdir(parents=True, exist_ok=True)
        provider, channels = make_provider(settings), make_channels(settings)
        for ch in channels:
            if hasattr(ch, "config") and hasattr(ch.config, "verify_retry_delay"):
                object.__setattr__(ch.config, "verify_retry_delay", 0.0)  # GroupMe: no second look; saves time
        runtime = Runtime(settings, provider, channels)
        app = build_http_app(runtime)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await runtime.opened()
        for email in LONG_ACCOUNTS:
            await runtime.store.put_user(LocalUser(email, LONG_HASH, runtime.service.clock()))
        box["served"] = Served(mode, port, connector, asyncio.get_running_loop(), runtime, app, store_env["VPN_STORE"])
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()
        await connector.stop()
        await gm.stop()

    try:
        asyncio.run(main())
    except BaseException as exc:  # surface start-up failures to the test thread
        box["error"] = exc
        ready.set()


@pytest.fixture(params=[("production", "sqlite"), ("dev", "sqlite"), ("production", "azure-tables"), ("dev", "azure-tables")],
                ids=lambda p: "-".join(p), scope="module")
def served(request, tmp_path_factory):
    mode, store = request.param
    store_env = {"VPN_STORE": store}
    if store == "azure-tables":  # issue 18: both stores (Azurite's key limits are tighter than Azure's)
        azurite = request.getfixturevalue("azurite")
        store_env.update(AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string, VPN_TABLE_PREFIX=azurite.prefix())
    mp = pytest.MonkeyPatch()
    mp.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a closed port: anything escaping loopback fails at once
    mp.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    tap = LogTap()
    logging.getLogger().addHandler(tap)
    ready, stop, box = threading.Event(), threading.Event(), {}
    thread = threading.Thread(target=_serve, args=(mode, store_env, tmp_path_factory.mktemp(mode), ready, box, stop), daemon=True)
    thread.start()
    tap.app_thread = thread.ident
    assert ready.wait(60), "the app did not start"
    if "error" in box:
        raise box["error"]
    s: Served = box["served"]
    s.tap = tap  # type: ignore[attr-defined]
    yield s
    stop.set()
    thread.join(60)
    logging.getLogger().removeHandler(tap)
    mp.undo()


def _route_patterns(app) -> list[tuple[str, str]]:
    """(method, regex of the path) for every route the app registered, channels' and later ones included."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "path" in info:
            out.append((route.method, re.escape(info["path"])))
        elif "pattern" in info:
            out.append((route.method, info["pattern"].pattern))
    return out


# ----- what to send -------------------------------------------------------------------------------------

surrogate_text = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
any_text = st.one_of(st.text(max_size=20), surrogate_text, st.sampled_from(["/vpn start", "/vpn status", "/vpn list", "/vpn stop", "/vpn help", "", "\x00"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), any_text)
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(any_text, kids, max_size=3)), max_leaves=6)


def _wrong(typed):
    """A field's plausible value, or anything at all in its place."""
    return st.one_of(typed, json_values)


groupme_callback = st.fixed_dictionaries(
    {},
    optional={
        "group_id": _wrong(st.sampled_from([GROUP, "999", ""])),
        "id": _wrong(st.integers(0, 10**30).map(str)),
        "user_id": _wrong(st.sampled_from(["111", "222", "12ab", "١٢٣"])),
        "sender_id": _wrong(st.just("111")),
        "sender_type": _wrong(st.sampled_from(["user", "bot", "system"])),
        "system": _wrong(st.booleans()),
        "text": _wrong(any_text),
        "attachments": _wrong(st.lists(st.fixed_dictionaries({"type": st.just("mentions"), "loci": json_values, "user_ids": json_values}), max_size=2)),
        "created_at": _wrong(st.integers()),
    },
)

account = st.fixed_dictionaries({}, optional={"id": _wrong(any_text), "aadObjectId": _wrong(st.sampled_from([ALICE_AAD, "00000000-0000-0000-0000-0000000000bb", "", "/" * 256])),
                                                "name": _wrong(any_text)})
teams_activity = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(["message"] * 4 + ["invoke"] * 3 + ["conversationUpdate", "installationUpdate", "messageReaction", "event", "typing", ""]), json_values)},
    optional={
        "id": st.one_of(_wrong(any_text), st.sampled_from(LONG_MESSAGE_IDS)),
        "text": _wrong(any_text),
        "name": _wrong(st.sampled_from(["fileConsent/invoke", "adaptiveCard/action", "composeExtension/query", "task/fetch", "signin/verifyState", "x"])),
        "value": st.one_of(json_values, st.fixed_dictionaries({}, optional={
            "type": _wrong(st.just("fileUpload")), "action": _wrong(st.sampled_from(["accept", "decline", ""])),
            "context": _wrong(st.fixed_dictionaries({}, optional={"token": _wrong(any_text), "session": _wrong(any_text)})),
            "uploadInfo": _wrong(st.fixed_dictionaries({}, optional={"name": _wrong(any_text), "uploadUrl": st.sampled_from(["http://127.0.0.1:9/upload", "", "not a url", "\udc80"]), "contentUrl": _wrong(any_text),
                                                                     "uniqueId": _wrong(any_text), "fileType": _wrong(any_text)})),
            "command": _wrong(any_text)})),
        "from": _wrong(account),
        "recipient": _wrong(account),
        "conversation": _wrong(st.fixed_dictionaries({}, optional={"id": _wrong(any_text), "conversationType": _wrong(st.sampled_from(["personal", "groupChat", "channel"])), "isGroup": json_values, "tenantId": _wrong(st.just(TENANT))})),
        "channelData": _wrong(st.fixed_dictionaries({}, optional={"tenant": _wrong(st.fixed_dictionaries({"id": _wrong(st.just(TENANT))})), "team": json_values, "channel": json_values})),
        "channelId": _wrong(st.sampled_from(["msteams", "emulator", "webchat"])),
        "entities": json_values,
        "attachments": json_values,
        "membersAdded": _wrong(st.lists(account, max_size=2)),
    },
)

_EVIL = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()


def _forged_jwt(claims) -> str:
    import jwt

    try:
        return jwt.encode(claims if isinstance(claims, dict) else {"x": 1}, "k" * 32, algorithm="HS256")
    except Exception:
        return "x.y.z"


# Issuers whose keys the SDK would fetch from the internet are never forged: that would leave loopback.
safe_claims = st.fixed_dictionaries({}, optional={
    "iss": st.sampled_from(["https://evil.example", "", "https://api.botframework.com.evil.example"]),
    "aud": st.sampled_from([APP_ID, "other", ""]), "exp": st.integers(-10, 2**40), "serviceurl": any_text,
})
auth_header = st.one_of(
    st.none(),
    st.sampled_from(["Bearer", "Bearer ", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "bearer a.b.c", f"Bearer {_EVIL}.e30.", f"Bearer {_EVIL}.W10.", "Bearer ....", "Bearer a.\udcff.c"]),
    safe_claims.map(lambda c: f"Bearer {_forged_jwt(c)}"),
    st.text(max_size=60).map(lambda t: f"Bearer {t}"),
    st.sampled_from(LONG_TOKENS).map(lambda t: f"Bearer {t}"),  # issue 18.6: identities past Table Storage's key limits
)
content_type = st.sampled_from([None, "application/json", "application/json", "application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", "multipart/form-data"])


def _json_bytes(value) -> bytes:
    return json.dumps(value).encode()  # ensure_ascii: lone surrogates travel as \\udXXX escapes


raw_bodies = st.one_of(
    st.integers(1, 20000).map(lambda n: b"[" * n),
    st.integers(1, 20000).map(lambda n: b'{"a":' * n),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"null", b"\xff\xfe{}", b'{"text": "\\ud800"}', b'"\\udfff"', b"1e999999", b"-" * 10, b'{"type": "message", "text": "\xed\xa0\x80"}']),
    st.integers(200_000, 400_000).map(lambda n: b'{"text": "' + b"x" * n + b'"}'),
)


@st.composite
def requests_(draw, routes: list[tuple[str, str]], mode: str, connector_url: str):
    patterns = sorted({p for _, p in routes})
    pattern = draw(st.sampled_from(patterns))  # each path alike, however many methods it has
    own_methods = sorted({m for m, p in routes if p == pattern} - {"HEAD"}) or ["GET"]
    path = quote(draw(st.from_regex(pattern, fullmatch=True)), safe="/:@!$&'()*+,;=-._~", errors="surrogatepass")
    if "groupme" in pattern:
        path = draw(st.sampled_from([f"/api/groupme/{SECRET}"] * 3 + [path]))
    if draw(st.integers(0, 9)) == 0:
        path = draw(st.sampled_from(["/", "/api", "/api/messages/", "/claim/", "/healthz?x=%ff", "/%2e%2e/etc/passwd", "/api/groupme/" + "a" * 3000]))
    method = draw(st.sampled_from(own_methods * 30 + METHODS))
    native = "teams" if path.startswith("/api/messages") else "groupme" if path.startswith("/api/groupme") else "json"
    kind = draw(st.sampled_from([native] * 3 + ["teams", "groupme", "json", "raw"]))
    if kind == "teams":
        value = draw(teams_activity)
        value["serviceUrl"] = connector_url  # replies may only ever go to the fake connector
        body = _json_bytes(value)
    elif kind == "groupme":
        body = _json_bytes(draw(groupme_callback))
    elif kind == "json":
        value = draw(json_values)
        if isinstance(value, dict):
            value["serviceUrl"] = connector_url
        body = _json_bytes(value)
    else:
        body = draw(raw_bodies)
        if b"serviceUrl" in body:
            body = b"{}"
    headers = {}
    if path == "/api/login" and draw(st.integers(0, 3)) == 0:  # issue 18.6: over-long and escaped emails, from many addresses
        body = _json_bytes({"email": draw(st.sampled_from(FUZZ_LOGINS)), "password": draw(st.sampled_from([LONG_PASSWORD, "x" * 12, "x" * 2000]))})
        headers["X-Forwarded-For"] = f"198.51.100.{draw(st.integers(1, 254))}"
    ctype = draw(st.one_of(st.just("application/json"), content_type) if kind == native else content_type)
    if ctype:
        headers["Content-Type"] = ctype
    auth = draw(auth_header)
    if auth is not None:
        headers["Authorization"] = auth
    if draw(st.booleans()):
        headers["Cookie"] = draw(st.sampled_from(["vpn_claim=" + "a" * 30, "vpn_claim_auth=zz", "vpn_claim=\x7f"]))
    if draw(st.integers(0, 5)) == 0:  # issue 18.5: a body that does not decompress
        headers["Content-Encoding"] = draw(st.sampled_from(COMPRESSIONS))
    if draw(st.integers(0, 4)) == 0:
        headers["Origin"] = draw(st.sampled_from(["null", "https://evil.example", "http://127.0.0.1"]))
        headers["Sec-Fetch-Site"] = draw(st.sampled_from(["cross-site", "same-origin", "none", "weird"]))
    return method, path, headers, body


# ----- the properties -----------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection, reopened whenever the server closes it (413 and the like)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                raw = {k: v.encode("utf-8", "surrogatepass").translate(None, b"\r\n\x00") for k, v in headers.items()}
                self.conn.request(method, path, body=body if method not in ("GET", "HEAD") or body else None, headers=raw)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.reopen()
                return resp.status, data
            except (http.client.HTTPException, ConnectionError, OSError):
                self.reopen()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def reopen(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


def test_fuzz_every_route(served: Served):
    routes = _route_patterns(served.app)
    assert len(routes) >= 6, routes
    client = Client(served.port)
    findings: list[str] = []
    served.tap.records.clear()  # type: ignore[attr-defined]

    @settings(max_examples=EXAMPLES_PER_MODE if served.store == "sqlite" else EXAMPLES_PER_MODE_ON_TABLES, deadline=None, database=None, phases=(Phase.generate, Phase.shrink),
              suppress_health_check=list(HealthCheck))
    @given(requests_(routes, served.mode, served.connector.base_url))
    def one(request):
        method, path, headers, body = request
        status, data = client.send(method, path, headers, body)
        ok = status < 500 or (status == 501 and path == "/api/messages")
        if not ok or b"Traceback" in data:
            findings.append(f"{method} {path[:60]} {headers} {body[:120]!r} -> {status} {data[:200]!r}")
        assert ok and b"Traceback" not in data, findings[-1]

    one()
    served.run(served.runtime.runner.wait_idle(60))
    status, data = client.send("GET", "/healthz", {}, b"")
    assert status == 200 and json.loads(data)["status"] == "ok"
    sessions = served.run(served.runtime.store.sessions(list(SessionState)))
    strangers = {s.owner for s in sessions} - ALLOWED
    assert not strangers, f"provisioned for someone not on the allowlist: {strangers}"
    if served.mode == "production":  # only the web tokens made for the long identities can start anything
        assert [s for s in sessions if s.owner != f"local:{LONG_SLASHES}"] == [], "nothing can pass Teams authentication or GroupMe verification here"
    tracebacks = sorted({_where(r) for r in served.tap.records if r.exc_info})  # type: ignore[attr-defined]
    known = [t for t in tracebacks if any(all(part in t for part in k) for k in KNOWN_ELSEWHERE)]
    if known:
        warnings.warn("known findings outside this test's reach, still to fix:\n" + "\n".join(known), stacklevel=1)
    new = [t for t in tracebacks if t not in known]
    assert not new, "tracebacks in the log:\n" + "\n".join(new)


def _where(record: logging.LogRecord) -> str:
    """Logger, message, exception and the innermost frame of ours (or the last one) that raised it."""
    import traceback

    exc_type, exc, tb = record.exc_info
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if "/site-packages/" not in f.filename] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} {ours[-1].name}" if ours else "?"
    return f"{record.name}: {record.getMessage()[:80]} -> {exc_type.__name__}: {str(exc)[:100]} at {where}"


def test_deep_nesting_and_broken_text_are_400_with_one_log_line(served: Served):
    """Issue 9 item 1: `'[' * 5000` raised RecursionError (not a ValueError) before any token was
    checked, a 500 and a traceback per request. Now 400 and one line, on every route that reads JSON."""
    client = Client(served.port)
    bodies = [b"[" * 5000, b'{"a":' * 5000, b'{"type": "message", "text": "\xed\xa0\x80"}', b"\xff\xfe{}"]
    for path in ("/api/messages", f"/api/groupme/{SECRET}", "/api/sessions", "/api/login"):
        for body in bodies:
            served.tap.records.clear()  # type: ignore[attr-defined]
            status, data = client.send("POST", path, {"Content-Type": "application/json"}, body)
            deep = body.startswith((b"[[", b'{"a":{')) and path.startswith(("/api/messages", "/api/groupme"))  # read before any auth
            assert (status == 400 if deep else 400 <= status < 500 or status == 200) and b"Traceback" not in data, (path, body[:20], status, data[:200])
            records = [r for r in served.tap.records if r.levelno >= logging.WARNING]  # type: ignore[attr-defined]
            assert len(records) <= 1 and not any(r.exc_info for r in records), [r.getMessage() for r in records]


def test_the_log_tap_ignores_a_neighbours_leftovers():
    """A record from another thread and another library (a neighbour test's leaked error) is not the app's."""
    tap = LogTap()
    tap.app_thread = threading.get_ident() + 1
    stray = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Exception in callback", None, (BrokenPipeError, BrokenPipeError(), None))
    tap.emit(stray)
    ours = logging.LogRecord("bot.http.app", logging.ERROR, __file__, 1, "boom", None, None)
    tap.emit(ours)
    assert tap.records == [ours]


def _raw(port: int, method: str, path: str, headers: dict, body: bytes, *, split: bool = False) -> tuple[int, bytes]:
    """One request on its own connection with `Connection: close`, read until the server closes it:
    whatever the server logs for it (a lingering close included) is logged by then. `split`: the
    body follows the head a moment later, so a handler is already waiting for it."""
    import socket

    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        if split:
            sock.sendall(head.encode())
            time.sleep(0.05)
            sock.sendall(body)
        else:
            sock.sendall(head.encode() + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[-1]


def _sample_paths(app, values: dict[str, str]) -> list[tuple[str, str]]:
    """(method, a concrete path) for every route the app registered."""
    out = []
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        info = resource.get_info()
        if "path" in info:
            path = info["path"]
        else:
            path = str(resource.url_for(**{k: values[k] for k in re.findall(r"\{(\w+)", info["formatter"])}))
        out.append((route.method, path))
    return sorted(set(out))


def test_compressed_garbage_is_400_with_one_log_line_on_every_route(served: Served):
    """Issue 18 item 5: a body whose Content-Encoding (gzip, deflate, br) does not decompress was a
    500 and a full traceback per request on every route that reads a body (/api/messages even with
    Teams auth on: the body is read before the token). Now 400 and one log line; routes that never
    read the body answer as they would and log at most one line for the unreadable rest."""
    from bot.channels.web.signin_local import hash_password
    from bot.store.ports import LocalUser

    client = Client(served.port)
    runtime = served.runtime
    password = "fuzz-password-0123456789"
    served.run(runtime.store.put_user(LocalUser(WEB_USER, hash_password(password), runtime.service.clock())))
    status, data = client.send("POST", "/api/login", {"Content-Type": "application/json"}, json.dumps({"email": WEB_USER, "password": password}).encode())
    assert status == 200, data
    auth = {"Authorization": f"Bearer {json.loads(data)['token']}"}
    status, data = client.send("POST", "/api/sessions", {"Content-Type": "application/json", **auth}, b"{}")
    assert status in (200, 201, 202), data
    sid = json.loads(data)["id"]
    reads_body = {("POST", "/api/messages"), ("POST", f"/api/groupme/{SECRET}"), ("POST", "/api/login"), ("POST", "/api/sessions"),
                  ("POST", f"/api/sessions/{sid}/extend")}
    routes = _sample_paths(served.app, {"secret": SECRET, "token": "t" * 43, "id": sid, "session": sid})
    assert reads_body <= set(routes), routes
    try:
        for method, path in routes:
            # Garbage from the first byte, and a stream that is fine until it ends too early (aiohttp
            # refuses a truncated deflate stream only at its end, and then never finishes the body).
            cases = [(e, b"xgarbage: not " + e.encode() + b" at all") for e in COMPRESSIONS] + [("deflate", b"[[["), ("deflate", b"x")]
            # A body sent after the head tests aiohttp's reading, which no store touches: on SQLite only (saves ~10 s a mode).
            for (encoding, garbage), split in itertools.product(cases, (False, True) if served.store == "sqlite" else (False,)):
                served.tap.records.clear()  # type: ignore[attr-defined]
                headers = {"Content-Type": "application/json", "Content-Encoding": encoding, **auth}
                started = time.monotonic()
                status, body = _raw(served.port, method, path, headers, garbage, split=split)
                where = (method, path, encoding, garbage, split, status, body[:120])
                assert time.monotonic() - started < 3, where  # not held until a time-out or a lingering close
                assert status == 400 if (method, path) in reads_body else status < 500, where
                assert b"Traceback" not in body, where
                records = [r for r in served.tap.records if r.levelno >= logging.WARNING]  # type: ignore[attr-defined]
                assert len(records) <= 1 and not any(r.exc_info for r in records), (where, [r.getMessage() for r in records])
    finally:
        client.send("DELETE", f"/api/sessions/{sid}", auth, b"")
        served.run(runtime.runner.wait_idle(30))


def test_over_long_identities_are_a_clear_answer_never_a_5xx(served: Served):
    """Issue 18 item 6: on Table Storage these were a 500 (a key past its limit once escaped) or dropped
    work (a Teams message never answered); message ids were told apart on their first 256 characters
    only. Each gets its own clear answer now, on both stores, with nothing logged at ERROR."""
    client = Client(served.port)
    served.tap.records.clear()  # type: ignore[attr-defined]
    json_type = {"Content-Type": "application/json"}

    def login(email: str, password: str, address: str) -> tuple[int, dict]:
        status, data = client.send("POST", "/api/login", {**json_type, "X-Forwarded-For": address}, _json_bytes({"email": email, "password": password}))
        assert b"Traceback" not in data, data[:300]
        return status, json.loads(data) if data.startswith(b"{") else {}

    # Logins: a long address is an address (a wrong password, counted under a bounded key); too long is 400.
    for email, expected in zip(LONG_LOGINS, (401, 401, 400, 400, 400), strict=True):
        status, answer = login(email, "not-the-password", "192.0.2.10")
        assert status == expected, (email[:20], status, answer)
        if status == 400:
            assert "email" in answer.get("error", "").lower(), answer
    status, _ = login(LONG_LOGINS[0], "not-the-password", "192.0.2.10")
    assert status == 401  # its counter was read back (a second try), not lost

    # Long identities with accounts: allowed (a session of their own) or refused (and audited under that identity).
    tokens = {}
    for email in LONG_ACCOUNTS[:2]:
        status, answer = login(email, LONG_PASSWORD, "192.0.2.11")
        assert status == 200, (email[:20], answer)
        tokens[email] = answer["token"]
    tokens.update(zip(LONG_ACCOUNTS[2:], LONG_TOKENS[2:4], strict=True))  # no addresses: signed in only by a token made for them

    def api(method: str, path: str, email: str, body: bytes = b"") -> tuple[int, bytes]:
        status, data = client.send(method, path, {**json_type, "Authorization": f"Bearer {tokens[email]}"}, body)
        assert status < 500 and b"Traceback" not in data, (method, path, email[:20], status, data[:300])
        return status, data

    status, data = api("GET", "/api/me", LONG_SLASHES)
    assert status == 200 and json.loads(data)["user"] == f"local:{LONG_SLASHES}", data
    for s in served.run(served.runtime.store.sessions(list(SessionState), owner=f"local:{LONG_SLASHES}")):
        if s.state.value in ("requested", "provisioning", "ready"):  # one the fuzz started for it
            api("DELETE", f"/api/sessions/{s.id}", LONG_SLASHES)
    served.run(served.runtime.runner.wait_idle(30))
    status, data = api("POST", "/api/sessions", LONG_SLASHES, b"{}")
    assert status == 202, data
    sid = json.loads(data)["id"]
    served.run(served.runtime.runner.wait_idle(30))
    status, data = api("GET", f"/api/sessions/{sid}", LONG_SLASHES)
    assert status == 200 and json.loads(data)["state"] == "ready", data
    status, data = api("POST", "/api/sessions", LONG_SLASHES, b"{}")
    assert status == 409, data  # one session each: its count was found under the long identity
    status, data = api("GET", "/api/sessions", LONG_SLASHES)
    assert [v["id"] for v in json.loads(data)["sessions"] if v["state"] == "ready"] == [sid], data
    status, _ = api("DELETE", f"/api/sessions/{sid}", LONG_SLASHES)
    assert status == 202
    for email in LONG_ACCOUNTS[1:]:
        for method, path in (("GET", "/api/me"), ("GET", "/api/sessions"), ("POST", "/api/sessions")):
            status, data = api(method, path, email, b"{}" if method == "POST" else b"")
            assert status == 403, (method, path, email[:20], status, data[:200])
    tokens["none"] = LONG_TOKENS[4]
    status, data = api("GET", "/api/me", "none")
    assert status == 401, data  # a token for an account that does not exist

    # Teams: message ids of 256 "/" (de-duplicated whole) and ids sharing their first 256 characters.
    def teams(message_id: str, conversation: str, aad: str = ALICE_AAD) -> int:
        activity = {
            "type": "message", "id": message_id, "serviceUrl": served.connector.base_url, "channelId": "msteams", "text": "/vpn status",
            "from": {"id": "29:long", "name": "Long", "aadObjectId": aad}, "recipient": {"id": "28:bot", "name": "VPN"},
            "conversation": {"id": conversation, "conversationType": "personal", "tenantId": TENANT}, "channelData": {"tenant": {"id": TENANT}},
        }
        status, data = client.send("POST", "/api/messages", json_type, _json_bytes(activity))
        assert status < 500 and b"Traceback" not in data, (message_id[:20], status, data[:300])
        return status

    cases = [("/" * 256, "a:long-1"), ("/" * 256, "a:long-1"), ("m" * 256 + "C" * 44, "a:long-2"), ("m" * 256 + "D" * 44, "a:long-3"),
             ("\U0001F600" * 256, "a:long-4"), ("x" * 300, "a:long-5")]
    statuses = [teams(mid, conv, aad="/" * 256 if conv == "a:long-5" else ALICE_AAD) for mid, conv in cases]
    served.run(served.runtime.runner.wait_idle(30))
    replies = {conv: sum(1 for c in served.connector.calls if c.method == "POST" and f"/conversations/{conv}/" in c.path) for _, conv in cases}
    if served.mode == "production":
        assert set(statuses) == {401}, statuses  # no token: refused before anything is stored
    else:
        assert all(200 <= s < 300 for s in statuses), statuses
        # The re-sent one answered once; the two sharing a 256-character prefix both; a stranger told who may use it.
        assert replies == {"a:long-1": 1, "a:long-2": 1, "a:long-3": 1, "a:long-4": 1, "a:long-5": 1}, replies

    errors = [r for r in served.tap.records if r.levelno >= logging.ERROR or r.exc_info]  # type: ignore[attr-defined]
    assert not errors, [(r.name, r.getMessage()[:200]) for r in errors]
