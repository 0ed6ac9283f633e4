"""The HTTP API as a script would use it: real HTTP on loopback, the dryrun provider, a real store."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import aiohttp
import pytest

from tests.support.qrtools import decode_qr
from tests.support.webharness import Client, WebApp

ALICE, BOB, ROOT, EVE = "alice@example.org", "bob@example.org", "root@example.org", "eve@elsewhere.example"
ORIGIN = "https://vpn.example.org"


@pytest.fixture
async def stack(tmp_path):
    """`make(**env)` -> a started replica on tmp_path/data (call twice for two replicas); an HTTP session."""
    apps = []
    http = aiohttp.ClientSession()

    async def make(**env) -> WebApp:
        env.setdefault("VPN_USERS", f"local:{ALICE},local:{BOB}")
        env.setdefault("VPN_ADMINS", f"email:{ROOT}")
        env.setdefault("VPN_CORS_ORIGINS", ORIGIN)
        app = await WebApp(tmp_path / "data", **env).start()
        apps.append(app)
        return app

    make.http = http
    yield make
    await http.close()
    for app in apps:
        await app.close()


async def signed_in(stack, app: WebApp, email: str) -> Client:
    await app.add_user(email)
    return await Client(stack.http, app.base).login(email)


async def test_start_poll_take_the_config_once_and_stop(stack, tmp_path):
    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    status, headers, s = await alice.json("POST", "/api/sessions", json={"minutes": 20})
    assert status == 202, s
    assert headers["Location"] == f"/api/sessions/{s['id']}"
    assert headers["Cache-Control"] == "no-store"
    assert set(s) >= {"id", "state", "progress", "region", "endpoint", "created_at", "expires_at", "error"}
    assert s["state"] in ("requested", "provisioning")
    seen_progress = set()
    s = await alice.wait_for(headers["Location"], lambda b: seen_progress.add(b["progress"]) or b["config_ready"] and b["state"] == "ready")
    assert any("Setting up your VPN" in p for p in seen_progress)
    assert s["endpoint"] and s["time_left"] > 19 * 60 and s["expires_at"].endswith("Z")

    status, headers, png = await alice.call("GET", f"{headers['Location']}/config.png")
    assert status == 200 and headers["Content-Type"] == "image/png" and headers["Cache-Control"] == "no-store"
    status, headers, conf = await alice.call("GET", f"/api/sessions/{s['id']}/config")
    assert status == 200, conf
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Content-Disposition"] == f'attachment; filename="vpn-{s["id"]}.conf"'
    assert headers["Cache-Control"] == "no-store"
    config = conf.decode()
    assert "PrivateKey = " in config and decode_qr(png) == config
    for path in ("config", "config.png"):
        status, _, body = await alice.json("GET", f"/api/sessions/{s['id']}/{path}")
        assert status == 410, body
    _, _, again = await alice.json("GET", f"/api/sessions/{s['id']}")
    assert again["config_ready"] is False

    # Nothing in the data directory holds the private key, now or while it was waiting.
    private = re.search(r"PrivateKey = (\S+)", config).group(1)
    for path in (tmp_path / "data").iterdir():
        assert private.encode() not in path.read_bytes(), path

    status, _, stopped = await alice.json("DELETE", f"/api/sessions/{s['id']}")
    assert status == 202 and stopped["state"] in ("expiring", "deleted")
    await app.settle()
    _, _, gone = await alice.json("GET", f"/api/sessions/{s['id']}")
    assert gone["state"] == "deleted" and "has ended" in gone["progress"]
    assert (await alice.json("GET", "/api/sessions"))[2] == {"sessions": []}
    status, _, _ = await alice.json("DELETE", f"/api/sessions/{s['id']}")
    assert status == 409
    audit = await app.runtime.store.audit_log()
    # Every request that reached the policy is audited, as in chat: the second stop too (the engine then refused it).
    assert [(e.user, e.channel, e.command) for e in reversed(audit)] == [
        (f"local:{ALICE}", "web", "start 20"), (f"local:{ALICE}", "web", f"stop {s['id']}"), (f"local:{ALICE}", "web", f"stop {s['id']}")
    ]


async def test_taking_the_file_first_erases_the_qr(stack):
    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    _, headers, s = await alice.json("POST", "/api/sessions")
    await alice.wait_for(headers["Location"], lambda b: b["config_ready"])
    assert (await alice.call("GET", f"/api/sessions/{s['id']}/config"))[0] == 200
    assert (await alice.call("GET", f"/api/sessions/{s['id']}/config.png"))[0] == 410


async def test_a_second_replica_serves_progress_and_the_config(stack):
    """Two processes on one store: the session starts on A; B reports it and hands out the config."""
    a = await stack()
    b = await stack()
    alice_a = await signed_in(stack, a, ALICE)
    alice_b = Client(stack.http, b.base, alice_a.token)
    _, headers, s = await alice_a.json("POST", "/api/sessions")
    ready = await alice_b.wait_for(headers["Location"], lambda body: body["config_ready"])
    assert ready["progress"]
    assert (await alice_b.call("GET", f"/api/sessions/{s['id']}/config.png"))[0] == 200
    assert (await alice_a.call("GET", f"/api/sessions/{s['id']}/config.png"))[0] == 410
    assert (await alice_a.call("GET", f"/api/sessions/{s['id']}/config"))[0] == 200


async def test_owners_admins_and_strangers(stack):
    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    bob = await signed_in(stack, app, BOB)
    root = await signed_in(stack, app, ROOT)
    eve = await signed_in(stack, app, EVE)
    _, headers, s = await alice.json("POST", "/api/sessions")
    await alice.wait_for(headers["Location"], lambda b: b["state"] == "ready")
    sid = s["id"]
    # Bob cannot see, stop, extend or take Alice's session: it does not exist for him.
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/extend"), ("GET", "/config"), ("GET", "/config.png")):
        assert (await bob.call(method, f"/api/sessions/{sid}{path}"))[0] == 404
    assert (await bob.json("GET", "/api/sessions"))[2] == {"sessions": []}
    # The admin sees everyone's, with owner and cost, but never someone else's config.
    _, _, listing = await root.json("GET", "/api/sessions")
    (row,) = listing["sessions"]
    assert row["owner"] == f"local:{ALICE}" and "cost" in row and row["messages"] == []
    assert (await root.call("GET", f"/api/sessions/{sid}/config"))[0] == 404
    _, _, me = await root.json("GET", "/api/me")
    assert me["role"] == "admin" and me["regions"] == ["local"]
    # Eve signed in fine but is not on the allowlist: 403, nothing started, the refusal audited.
    status, _, body = await eve.json("POST", "/api/sessions")
    assert status == 403 and body["user"] == f"local:{EVE}"
    assert len(await app.runtime.service.live_sessions()) == 1
    assert any(not e.allowed and e.user == f"local:{EVE}" for e in await app.runtime.store.audit_log())
    # The admin stops it.
    status, _, stopped = await root.json("DELETE", f"/api/sessions/{sid}")
    assert status == 202 and stopped["owner"] == f"local:{ALICE}"
    await app.settle()
    assert "stopped by an admin" in (await alice.json("GET", f"/api/sessions/{sid}"))[2]["progress"]


async def test_extend_and_limits(stack):
    app = await stack(VPN_MAX_SESSION_MINUTES="60")
    alice = await signed_in(stack, app, ALICE)
    _, headers, s = await alice.json("POST", "/api/sessions", json={"minutes": 30})
    before = await alice.wait_for(headers["Location"], lambda b: b["state"] == "ready")
    status, _, after = await alice.json("POST", f"/api/sessions/{s['id']}/extend", json={"minutes": 20})
    assert status == 200 and after["time_left"] >= before["time_left"] + 19 * 60
    status, _, body = await alice.json("POST", f"/api/sessions/{s['id']}/extend", json={"minutes": 30})
    assert status == 409 and "at most" in body["error"]
    status, _, body = await alice.json("POST", "/api/sessions")
    assert status == 409 and "already have" in body["error"]


@pytest.mark.parametrize(
    "body, problem",
    [
        ({"region": "mars"}, "region must be one of"),
        ({"minutes": 0}, "minutes must be"),
        ({"minutes": 10_000}, "minutes must be"),
        ({"minutes": "10"}, "minutes must be"),
        ({"minutes": True}, "minutes must be"),
        ({"public_key": "not-a-key"}, "public_key"),
        ([1, 2], "JSON object"),
        (b"{not json", "not valid JSON"),
    ],
)
async def test_bad_input_is_a_400_and_starts_nothing(stack, body, problem):
    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    kw = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    status, _, answer = await alice.json("POST", "/api/sessions", **kw)
    assert status == 400 and problem in answer["error"]
    assert await app.runtime.service.live_sessions() == []


async def test_anonymous_and_invalid_tokens_get_401_and_cause_no_work(stack):
    app = await stack()
    anon = Client(stack.http, app.base)
    for method, path in (("GET", "/api/sessions"), ("POST", "/api/sessions"), ("GET", "/api/sessions/0123456789"), ("GET", "/api/me")):
        status, headers, _ = await anon.call(method, path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    for token in ("garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 8100):
        assert (await Client(stack.http, app.base, token).call("POST", "/api/sessions"))[0] == 401
    assert await app.runtime.service.live_sessions() == []
    assert await app.runtime.store.audit_log() == []
    status, _, body = await anon.json("POST", "/api/login", data=b"[]", headers={"Content-Type": "application/json"})
    assert status == 400


async def test_bring_your_own_key_gets_peer_settings_and_no_config(stack):
    from provisioner.wireguard import generate_keypair

    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    public = generate_keypair().public
    _, headers, s = await alice.json("POST", "/api/sessions", json={"public_key": public})
    ready = await alice.wait_for(headers["Location"], lambda b: b["state"] == "ready")
    assert any("Peer settings for your own key" in m and "[Peer]" in m for m in ready["messages"])
    assert ready["config_ready"] is False
    assert (await alice.call("GET", f"/api/sessions/{s['id']}/config"))[0] == 410


async def test_cors_only_for_configured_origins(stack):
    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = await alice.call("OPTIONS", "/api/sessions", headers=preflight)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN and "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = await alice.call("GET", "/api/sessions", headers={"Origin": ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN and "Location" in headers["Access-Control-Expose-Headers"]
    for evil in ("https://evil.example", "null", ORIGIN + ".evil.example"):
        status, headers, _ = await alice.call("OPTIONS", "/api/sessions", headers={**preflight, "Origin": evil})
        assert status == 403 and not any(h.startswith("Access-Control-") for h in headers)
        status, headers, _ = await alice.call("GET", "/api/sessions", headers={"Origin": evil})
        assert status == 200 and not any(h.startswith("Access-Control-") for h in headers)
    # Other channels' routes are not ours to answer for.
    status, headers, _ = await alice.call("OPTIONS", "/api/messages", headers=preflight)
    assert status in (404, 405) and not any(h.startswith("Access-Control-") for h in headers)
    # No wildcard: the setting refuses one.
    from bot.settings import Settings, SettingsError

    with pytest.raises(SettingsError):
        Settings.from_env({"VPN_CORS_ORIGINS": "*"})


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts, self.inline_handlers, self.fields, self.labels = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("input", "select", "textarea"):
            self.fields.append(attrs.get("id"))
        if tag == "label":
            self.labels.append(attrs.get("for"))
        if tag == "script":
            self.scripts.append(attrs.get("src"))
        self.inline_handlers += [k for k in attrs if k.startswith("on")]


async def test_the_page_is_static_with_a_strict_csp(stack):
    app = await stack()
    anon = Client(stack.http, app.base)
    status, headers, body = await anon.call("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    parser = _Scripts()
    parser.feed(body.decode())
    assert parser.scripts == ["/app.js"] and parser.inline_handlers == []
    assert parser.fields and sorted(parser.fields) == sorted(parser.labels)  # every field has its label
    assert '<html lang="en">' in body.decode() and 'name="viewport"' in body.decode()
    assert (await anon.call("GET", "/app.js"))[0] == 200 and (await anon.call("GET", "/style.css"))[0] == 200
    status, headers, doc = await anon.json("GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert {"/api/login", "/api/sessions", "/api/sessions/{id}", "/api/sessions/{id}/extend", "/api/sessions/{id}/config",
            "/api/sessions/{id}/config.png"} <= set(doc["paths"])


async def test_the_web_channel_is_off_without_a_sign_in_method(tmp_path):
    from bot.settings import Settings, SettingsError
    from bot.wiring import make_channels

    assert [ch.name for ch in make_channels(Settings.from_env({"VPN_DATA_DIR": str(tmp_path)}))] == []
    with pytest.raises(SettingsError, match="VPN_LOCAL_AUTH_SECRET"):
        Settings.from_env({"VPN_ENTRA_TENANT_ID": "11111111-2222-3333-4444-555555555555", "VPN_ENTRA_API_AUDIENCE": "x"})
    with pytest.raises(SettingsError, match="at least 32"):
        Settings.from_env({"VPN_LOCAL_AUTH_SECRET": "short"})


async def test_notes_keep_the_latest_within_what_the_store_holds(stack):
    from bot.messages import ConversationRef

    app = await stack()
    web = next(ch for ch in app.channels if ch.name == "web")
    conv = ConversationRef("web", {"request": "r1", "user": "local:x@example.org"})
    for i in range(30):
        await web.send_text(conv, f"notice {i} " + "y" * 1990)
    import json

    notes = json.loads(await app.runtime.store.get_progress("web:r1:notes"))
    assert notes[-1].startswith("notice 29") and 1 <= len(notes) <= 12
    assert await app.runtime.store.get_progress("web:r1") == notes[-1][:2000]


# ----- found by review: hostile input, split bodies, HEAD, the form without script ------------------

def _b64url(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_hostile_bodies_and_tokens_are_4xx_never_5xx(stack):
    """Deeply nested JSON (RecursionError in json), lone surrogates (SQLite cannot encode them), a nested token header."""
    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    _, headers, s = await alice.json("POST", "/api/sessions")
    await alice.wait_for(headers["Location"], lambda b: b["state"] == "ready")
    deep = b"[" * 15_000
    as_json = {"Content-Type": "application/json"}
    anon = Client(stack.http, app.base)
    for client, path, body in (
        (anon, "/api/login", deep),
        (anon, "/api/login", b'{"email": "a\\ud800@example.org", "password": "whatever-it-is"}'),
        (anon, "/api/login", b'{"email": "alice@example.org", "password": "x\\udfff"}'),
        (alice, "/api/sessions", deep),
        (alice, f"/api/sessions/{s['id']}/extend", deep),
    ):
        status, _, answer = await client.call("POST", path, data=body, headers=as_json)
        assert 400 <= status < 500, (path, body[:40], status, answer[:80])
    for token in (_b64url(b"[" * 1400) + ".e30.x", _b64url(b'{"alg": "HS256", "x": ' + b"[" * 1300 + b"}") + ".e30.x"):
        status, headers, _ = await Client(stack.http, app.base, token).call("GET", "/api/sessions")
        assert status == 401 and headers["Cache-Control"] == "no-store"


async def test_a_body_sent_in_pieces_is_read_whole(stack):
    """A chunked body arrives in several reads; the first piece alone is not the body."""
    import asyncio
    import json

    app = await stack()
    await app.add_user(ALICE)
    body = json.dumps({"email": ALICE, "password": "correct horse battery staple"}).encode()

    async def pieces():
        for i in range(0, len(body), 10):
            yield body[i:i + 10]
            await asyncio.sleep(0.02)

    async with stack.http.post(app.base + "/api/login", data=pieces(), headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()

    async def too_big():
        for _ in range(3):
            yield b" " * 10_000
            await asyncio.sleep(0.02)

    async with stack.http.post(app.base + "/api/login", data=too_big(), headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413


async def test_head_does_not_spend_the_config(stack):
    """HEAD is a safe method: a download manager's size check must not burn the one-time config."""
    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    _, headers, s = await alice.json("POST", "/api/sessions")
    await alice.wait_for(headers["Location"], lambda b: b["config_ready"])
    for path in ("config.png", "config"):
        status, _, _ = await alice.call("HEAD", f"/api/sessions/{s['id']}/{path}")
        assert status == 405
    assert (await alice.call("GET", f"/api/sessions/{s['id']}/config.png"))[0] == 200
    assert (await alice.call("GET", f"/api/sessions/{s['id']}/config"))[0] == 200


async def test_the_sign_in_form_never_puts_the_password_in_a_url(stack):
    """Before app.js runs (or if it fails to load) a submitted form goes by its own method: GET would put the password in the URL."""
    app = await stack()
    _, _, body = await Client(stack.http, app.base).call("GET", "/")
    forms = dict(re.findall(r'<form id="(\w[\w-]*)"([^>]*)>', body.decode()))
    assert 'method="post"' in forms["local"]


async def test_a_config_that_never_existed_is_not_called_downloaded(stack):
    from provisioner.wireguard import generate_keypair

    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    _, headers, s = await alice.json("POST", "/api/sessions", json={"public_key": generate_keypair().public})
    await alice.wait_for(headers["Location"], lambda b: b["state"] == "ready")
    status, _, body = await alice.json("GET", f"/api/sessions/{s['id']}/config")
    assert status == 410 and "already downloaded" not in body["error"] and "your own key" in body["error"]
    status, _, body = await alice.json("POST", f"/api/sessions/{s['id']}/extend", json={"minutes": 20_000})
    assert status == 400 and "10080" in body["error"]


async def test_twenty_concurrent_takes_over_two_replicas_hand_out_each_once(stack):
    import asyncio

    a = await stack()
    b = await stack()
    alice_a = await signed_in(stack, a, ALICE)
    alice_b = Client(stack.http, b.base, alice_a.token)
    _, headers, s = await alice_a.json("POST", "/api/sessions")
    await alice_a.wait_for(headers["Location"], lambda body: body["config_ready"])
    for path in ("config.png", "config"):
        results = await asyncio.gather(*[(alice_a, alice_b)[i % 2].call("GET", f"/api/sessions/{s['id']}/{path}") for i in range(20)])
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] + [410] * 19, statuses


async def test_json_log_lines_of_a_web_request_name_its_user(stack):
    """VPN_LOG_FORMAT=json: the lines a web request logs (its audit line among them) carry the signed-in user."""
    import io
    import json
    import logging

    from bot.logs import JsonFormatter

    app = await stack()
    alice = await signed_in(stack, app, ALICE)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        status, _, _ = await alice.json("POST", "/api/sessions", json={"minutes": 20})
        assert status == 202
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    audit = [json.loads(line) for line in buf.getvalue().splitlines() if '"audit user=' in line]
    assert audit and all(line["user"] == f"local:{ALICE}" for line in audit), buf.getvalue()
