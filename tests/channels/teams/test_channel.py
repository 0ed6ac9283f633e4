"""Teams end to end: real aiohttp app, real botbuilder CloudAdapter, a fake Bot Connector on 127.0.0.1."""
from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.channels.teams.channel import TeamsChannel

from bot.channels.teams.config import TeamsConfig
from bot.store.model import SessionState
from bot.wiring import build_http_app
from tests.fakes.connector import FakeConnector
from tests.support.qrtools import decode_qr

FIXTURES = Path(__file__).parent / "payloads"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
ALICE_AAD = "00000000-0000-0000-0000-00000000a11c"
BOB_AAD = "00000000-0000-0000-0000-000000000b0b"
ROOT_AAD = "00000000-0000-0000-0000-0000000000ff"
_ids = iter(range(10_000, 99_999))
# The fake OneDrive upload URL is http on 127.0.0.1: dev mode accepts that host when it is listed.
LOCAL_UPLOADS = ("*.sharepoint.com", "127.0.0.1")


def dev_config(**kw) -> TeamsConfig:
    return TeamsConfig(**{"dev_mode": True, "backoff": 0.01, "upload_hosts": LOCAL_UPLOADS, **kw})


def activity(fixture: str, **values) -> dict:
    text = (FIXTURES / f"{fixture}.json").read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    data = json.loads(text)
    data["id"] = values.get("id", f"{data['id']}-{next(_ids)}")
    return data


class Harness:
    def __init__(self, connector: FakeConnector, server: TestServer, runtime) -> None:
        self.connector, self.server = connector, server
        self.runtime = runtime
        self.url = str(server.make_url("/api/messages"))

    async def post(self, data, *, headers=None, raw: bytes | None = None) -> aiohttp.ClientResponse:
        async with aiohttp.ClientSession() as http:
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            payload = raw if raw is not None else json.dumps(data).encode()
            async with http.post(self.url, data=payload, headers=hdrs) as resp:
                await resp.read()
                return resp

    async def say(self, text: str, *, kind: str = "personal_message", aad: str = ALICE_AAD, **extra) -> aiohttp.ClientResponse:
        return await self.post(activity(kind, serviceUrl=self.connector.base_url, aadObjectId=aad, tenantId=TENANT, text=text, **extra))

    async def settle(self) -> None:
        await self.runtime.runner.wait_idle(30)

    def everything_sent(self, conversation: str | None = None) -> str:
        return "\n".join(FakeConnector.text_of(c) for c in self.connector.sent(conversation) + self.connector.updates())


@pytest.fixture
async def make_teams(make_runtime):
    made = []

    async def build(*, users: str = f"teams:{ALICE_AAD},teams:{BOB_AAD}", admins: str = f"teams:{ROOT_AAD}", config: TeamsConfig | None = None, **env) -> Harness:
        connector = await FakeConnector(members={
            "29:1alice-teams-user-id": {"id": "29:1alice-teams-user-id", "name": "Alice", "aadObjectId": ALICE_AAD,
                                        "email": "alice@contoso.com", "userPrincipalName": "alice@contoso.com", "tenantId": TENANT},
        }).start()
        channel = TeamsChannel(config or dev_config())
        runtime = make_runtime(users=users, admins=admins, VPN_DRYRUN_STEP_SECONDS=0, channels=[channel], **env)
        server = TestServer(build_http_app(runtime), host="127.0.0.1")
        await server.start_server()
        await runtime.opened()
        made.append((connector, server))
        return Harness(connector, server, runtime)

    yield build
    for connector, server in made:
        await server.close()
        await connector.stop()


async def test_personal_chat_happy_path_with_file_consent(make_teams, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    h = await make_teams()
    resp = await h.say("/vpn start")
    assert resp.status == 201
    await h.settle()
    conv = "a:1personal-alice"
    sent = h.connector.sent(conv)
    assert "starting VPN session" in FakeConnector.text_of(sent[0])  # the acknowledgement comes first
    assert h.connector.updates(), "progress is one card updated in place"
    progress_ids = {c.path.rsplit("/", 1)[1] for c in h.connector.updates()}
    assert len(progress_ids) == 1
    cards = [c.body for c in sent for a in (c.body.get("attachments") or []) if a["contentType"] == "application/vnd.microsoft.card.adaptive"]
    qr_card = next(b for b in cards if "data:image/png;base64," in json.dumps(b))
    image = next(el for el in qr_card["attachments"][0]["content"]["body"] if el["type"] == "Image")
    config = decode_qr(base64.b64decode(image["url"].split(",", 1)[1]))
    assert config.startswith("[Interface]\nPrivateKey = ")
    consent = next(a for c in sent for a in (c.body.get("attachments") or []) if a["contentType"] == "application/vnd.microsoft.teams.card.file.consent")
    assert consent["name"].endswith(".conf") and consent["content"]["sizeInBytes"] == len(config.encode())
    token = consent["content"]["acceptContext"]["token"]
    assert "PrivateKey" not in json.dumps(consent)  # the card carries a token, not the file

    upload_url = h.connector.base_url.split("/teams-prefix/")[0] + "/upload/vpn.conf"
    (s,) = await h.runtime.store.sessions([SessionState.READY])
    resp = await h.post(activity("invoke_file_consent", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT,
                                 conversationId=conv, action="accept", token=token, session=s.id, name=consent["name"], uploadUrl=upload_url))
    assert resp.status == 200
    await h.settle()
    (upload,) = h.connector.uploads
    assert upload.method == "PUT" and upload.body["bytes"] == config
    assert upload.headers["Content-Range"] == f"bytes 0-{len(config) - 1}/{len(config)}"
    info = [a for c in h.connector.sent(conv) for a in (c.body.get("attachments") or []) if a["contentType"] == "application/vnd.microsoft.teams.card.file.info"]
    assert info and info[0]["contentUrl"].endswith(consent["name"])
    # The sealed file is gone from the store; a second accept gets a polite note, not the file.
    resp = await h.post(activity("invoke_file_consent", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT,
                                 conversationId=conv, action="accept", token=token, session=s.id, name=consent["name"], uploadUrl=upload_url))
    await h.settle()
    assert len(h.connector.uploads) == 1 and "no longer available" in h.everything_sent(conv)
    private = config.split("PrivateKey = ")[1].split("\n")[0]
    for path in h.runtime.settings.ops.data_dir.iterdir():
        assert private.encode() not in path.read_bytes()
    assert private not in caplog.text  # not even at DEBUG


async def test_decline_keeps_the_qr_and_erases_the_file(make_teams):
    h = await make_teams()
    await h.say("/vpn start")
    await h.settle()
    consent = next(a for c in h.connector.sent() for a in (c.body.get("attachments") or []) if a["contentType"].endswith("file.consent"))
    token = consent["content"]["declineContext"]["token"]
    await h.post(activity("invoke_file_consent", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT,
                          conversationId="a:1personal-alice", action="decline", token=token, session="x", name="x.conf", uploadUrl="http://127.0.0.1:1/never"))
    await h.settle()
    assert "the QR code above is all you need" in h.everything_sent()
    assert h.connector.uploads == []
    from bot.one_time_configs import token_hash

    claim = await h.runtime.store.get_claim(token_hash(token))
    assert claim.sealed is None


@pytest.mark.parametrize("kind, group_conv", [("groupchat_mention", "19:groupchat-abc@thread.v2"), ("channel_mention", "19:general-xyz@thread.tacv2")])
async def test_group_and_channel_mentions_deliver_privately(make_teams, kind, group_conv):
    h = await make_teams()
    resp = await h.say("vpn start", kind=kind)
    assert resp.status == 201
    await h.settle()
    in_group = "\n".join(FakeConnector.text_of(c) for c in h.connector.calls if group_conv in c.path)
    assert "starting VPN session" in in_group and "privately" in in_group
    assert "PrivateKey" not in in_group and "data:image" not in in_group and "file.consent" not in in_group
    created = [c for c in h.connector.calls if c.method == "POST" and c.path.endswith("/v3/conversations")]
    assert created and created[0].body["members"][0]["id"] == "29:1alice-teams-user-id" and created[0].body["isGroup"] is False
    assert created[0].body["channelData"] == {"tenant": {"id": TENANT}}
    private = h.everything_sent("a:1personal-29:1alice-teams-user-id")
    assert "data:image/png;base64," in private and "file.consent" in private


async def test_stranger_is_refused(make_teams):
    h = await make_teams()
    await h.say("/vpn start", aad="00000000-0000-0000-0000-0000000bad00")
    await h.settle()
    text = h.everything_sent()
    assert "not allowed" in text and await h.runtime.store.sessions(list(SessionState)) == []


async def test_email_rules_use_the_verified_member_email(make_teams):
    h = await make_teams(users="domain:contoso.com")
    await h.say("/vpn help")
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()
    assert any("/members/29:1alice-teams-user-id" in c.path for c in h.connector.calls)


async def test_admin_list_card_with_stop_buttons_and_card_actions_are_authorised(make_teams):
    h = await make_teams()
    await h.say("/vpn start")
    await h.settle()
    (s,) = await h.runtime.store.sessions([SessionState.READY])
    await h.say("/vpn list", aad=ROOT_AAD)
    await h.settle()
    card = next(c.body["attachments"][0]["content"] for c in reversed(h.connector.sent()) if "Live VPN sessions" in json.dumps(c.body))
    stop = next(a for el in card["body"] if el["type"] == "Container" for item in el["items"] if item["type"] == "ActionSet" for a in item["actions"])
    assert stop["data"] == {"command": f"/vpn stop {s.id}"}
    # Bob presses the Stop button on a forwarded card: a card action is authorised like typed text.
    pressed = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=BOB_AAD, tenantId=TENANT, text="")
    pressed.pop("text")
    pressed["value"] = stop["data"]
    await h.post(pressed)
    await h.settle()
    assert "only admins can stop another person's session" in h.everything_sent()
    assert (await h.runtime.store.sessions([SessionState.READY]))
    pressed = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ROOT_AAD, tenantId=TENANT, text="")
    pressed.pop("text")
    pressed["value"] = stop["data"]
    await h.post(pressed)
    await h.settle()
    assert [x.state for x in await h.runtime.store.sessions(list(SessionState))] == [SessionState.DELETED]


async def test_welcome_on_install(make_teams):
    h = await make_teams()
    resp = await h.post(activity("installed", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT))
    assert resp.status in (200, 201)
    await h.settle()
    text = h.everything_sent()
    assert "Hi! I hand out short-lived WireGuard VPN access" in text and "/vpn start" in text and "/vpn list" not in text


async def test_bad_requests_get_4xx(make_teams):
    h = await make_teams()
    assert (await h.post(None, raw=b"{not json")).status == 400
    assert (await h.post(None, raw=b"[]")).status == 400
    assert (await h.post({"text": "no type"})).status == 400
    assert (await h.post(None, raw=b"{}", headers={"Content-Type": "text/plain"})).status == 415
    assert (await h.post(None, raw=b'{"type": "message", "x": "' + b"a" * 300_000 + b'"}')).status == 413
    weird = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn help")
    del weird["from"]
    assert (await h.post(weird)).status < 500


async def test_retries_429_and_stops_on_403(make_teams, caplog):
    h = await make_teams()
    h.connector.faults.append(("POST", "/activities", 429, {"error": {"code": "TooManyRequests"}}))
    await h.say("/vpn help")
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()
    assert len([c for c in h.connector.calls if c.method == "POST" and "/activities" in c.path]) == 2
    h.connector.faults.append(("POST", "/activities", 403, {"error": {"code": "MessageWritesBlocked", "message": "blocked"}}))
    before = len(h.connector.calls)
    await h.say("/vpn help")
    await h.settle()
    assert len(h.connector.calls) - before == 1  # the member lookup is cached; the one send is not retried
    assert "403" in caplog.text and "not retrying" in caplog.text


async def test_duplicate_activity_starts_one_session(make_teams):
    h = await make_teams()
    data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn start")
    await asyncio.gather(*(h.post(data) for _ in range(3)))
    await h.settle()
    assert len(await h.runtime.store.sessions(list(SessionState))) == 1


async def test_tenant_restriction(make_teams):
    h = await make_teams(config=TeamsConfig(dev_mode=True, allowed_tenants=("11111111-1111-1111-1111-111111111111",), backoff=0.01))
    await h.say("/vpn start")
    await h.settle()
    assert h.connector.sent() == [] and await h.runtime.store.sessions(list(SessionState)) == []


async def test_auth_on_refuses_missing_and_bad_tokens(make_teams):
    """With credentials the SDK checks every request's token; these fail before any key download."""
    import jwt

    h = await make_teams(config=TeamsConfig(app_id="11111111-2222-3333-4444-555555555555", app_password="secret",
                                            app_type="SingleTenant", tenant_id=TENANT))
    data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn start")
    assert (await h.post(data)).status == 401
    assert (await h.post(data, headers={"Authorization": "Bearer not-a-jwt"})).status == 401
    forged = jwt.encode({"iss": "https://evil.example", "aud": "11111111-2222-3333-4444-555555555555"}, "k" * 32, algorithm="HS256")
    assert (await h.post(data, headers={"Authorization": f"Bearer {forged}"})).status == 401
    await h.settle()
    assert h.connector.calls == [] and await h.runtime.store.sessions(list(SessionState)) == []


async def test_restart_between_ack_and_delivery_still_delivers(make_runtime, tmp_path):
    """The first process acknowledges, then dies; the next one resumes and its proactive messages arrive."""
    connector = await FakeConnector(members={}).start()
    try:
        first = TeamsChannel(TeamsConfig(dev_mode=True, backoff=0.01))
        rt = make_runtime(users=f"teams:{ALICE_AAD}", VPN_DRYRUN_STEP_SECONDS=5, channels=[first])
        server = TestServer(build_http_app(rt), host="127.0.0.1")
        await server.start_server()
        h = Harness(connector, server, rt)
        await h.say("/vpn start")
        await asyncio.sleep(0.5)
        assert "starting VPN session" in h.everything_sent()
        await server.close()  # shutdown mid-provisioning: the session stays in the store, unfinished
        assert [s.state for s in await _sessions(tmp_path)] == ["provisioning"]
        before = len(connector.sent())

        second = TeamsChannel(TeamsConfig(dev_mode=True, backoff=0.01))
        rt = make_runtime(users=f"teams:{ALICE_AAD}", VPN_DRYRUN_STEP_SECONDS=0, channels=[second])
        server = TestServer(build_http_app(rt), host="127.0.0.1")
        await server.start_server()
        try:
            await rt.opened()
            await rt.service.sweep()  # what start-up does
            await rt.runner.wait_idle(30)
            later = "\n".join(FakeConnector.text_of(c) for c in connector.sent("a:1personal-alice")[before:])
            assert "restarted while setting up" in later and "data:image/png;base64," in later and "file.consent" in later
        finally:
            await server.close()
    finally:
        await connector.stop()


async def _sessions(tmp_path):
    import sqlite3
    from types import SimpleNamespace

    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
    rows = db.execute("SELECT state FROM sessions").fetchall()
    db.close()
    return [SimpleNamespace(state=r[0]) for r in rows]


def test_manifest_package(tmp_path):
    import io
    import zipfile

    from PIL import Image

    from bot.channels.teams.manifest import package

    data = package("11111111-2222-3333-4444-555555555555", website="https://vpn.example.org", version="1.2.3")
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == ["color.png", "manifest.json", "outline.png"]
    m = json.loads(z.read("manifest.json"))
    assert m["manifestVersion"] == "1.17" and m["version"] == "1.2.3" and re.fullmatch(r"[0-9a-f-]{36}", m["id"])
    assert len(m["name"]["short"]) <= 30 and len(m["description"]["short"]) <= 80 and len(m["description"]["full"]) <= 4000
    assert all(m["developer"][k].startswith("https://") for k in ("websiteUrl", "privacyUrl", "termsOfUseUrl"))
    assert re.fullmatch(r"#[0-9A-F]{6}", m["accentColor"])
    (b,) = m["bots"]
    assert b["botId"] == "11111111-2222-3333-4444-555555555555" and b["supportsFiles"] is True
    assert set(b["scopes"]) == {"personal", "team", "groupChat"}
    assert len(b["commandLists"]) <= 3 and all(len(cl["commands"]) <= 10 for cl in b["commandLists"])
    assert all(c["description"] for cl in b["commandLists"] for c in cl["commands"])
    color = Image.open(io.BytesIO(z.read("color.png")))
    outline = Image.open(io.BytesIO(z.read("outline.png")))
    assert color.size == (192, 192) and outline.size == (32, 32) and outline.mode == "RGBA"
    pixels = [outline.getpixel((x, y)) for x in range(32) for y in range(32)]
    assert {p[3] for p in pixels} >= {0, 255}  # transparent background, opaque outline
    assert all(p[:3] == (255, 255, 255) for p in pixels if p[3])  # the outline is white


def test_manifest_command(tmp_path):
    import subprocess
    import sys

    from tests.support.apprun import APP, app_env

    env = app_env(tmp_path / "data", MicrosoftAppId="11111111-2222-3333-4444-555555555555", MicrosoftAppPassword="x",
                  MicrosoftAppTenantId=TENANT, VPN_PUBLIC_URL="https://vpn.example.org")
    out = tmp_path / "vpn-bot.zip"
    result = subprocess.run([sys.executable, APP, "teams-manifest", "--out", str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 500


def test_refuses_to_start_with_half_configured_credentials(tmp_path):
    import subprocess
    import sys

    from tests.support.apprun import APP, app_env

    for extra, expect in [
        ({"MicrosoftAppPassword": "x"}, "MicrosoftAppId is missing"),
        ({"MicrosoftAppId": "11111111-2222-3333-4444-555555555555", "MicrosoftAppPassword": "x"}, "MicrosoftAppTenantId is required"),
        ({"MicrosoftAppId": "11111111-2222-3333-4444-555555555555", "MicrosoftAppTenantId": TENANT}, "MicrosoftAppPassword is required"),
        ({"MicrosoftAppType": "Nonsense"}, "MicrosoftAppType='Nonsense' is not valid"),
        ({"MicrosoftAppId": "11111111-2222-3333-4444-555555555555", "MicrosoftAppType": "MultiTenant"}, "MicrosoftAppPassword is required with MicrosoftAppType=MultiTenant"),
    ]:
        result = subprocess.run([sys.executable, APP, "serve"], env=app_env(tmp_path / "data", PORT="1", **extra), capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and expect in result.stderr, result.stderr


async def test_dev_mode_serve_binds_loopback_and_says_so(tmp_path):
    import signal
    import sys

    from tests.support.apprun import APP, app_env
    from tests.support.loopback import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, APP, "serve", env=app_env(tmp_path / "data", PORT=str(port), HOST="0.0.0.0", VPN_DEV_MODE="1"),
                                                stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    text = err.decode()
    assert "NOT authenticated" in text and "serving on http://127.0.0.1:" in text and "channels: teams" in text


async def test_progress_updates_are_coalesced(make_teams):
    from bot.messages import ConversationRef

    h = await make_teams()
    await h.say("/vpn help")
    await h.settle()
    channel = h.runtime.channels[0]
    conv = ConversationRef("teams", {"reference": {"conversation": {"id": "a:1personal-alice"}, "serviceUrl": h.connector.base_url,
                                                   "channelId": "msteams", "bot": {"id": "28:vpn-bot-app-id"}}, "conversation_type": "personal"})
    handle = await channel.send_progress(conv, "step 0", None)
    for i in range(1, 8):  # as fast as a provider with 0 s steps: none of these waits for Teams
        assert await channel.send_progress(conv, f"step {i}", handle) == handle
    await h.settle()
    updates = h.connector.updates()
    assert 1 <= len(updates) < 7 and "step 7" in FakeConnector.text_of(updates[-1])


async def started_then_second_replica(connector: FakeConnector, make_runtime) -> tuple[Harness, TestServer]:
    """Alice's `/vpn start` served by one replica, which then goes away; a harness on a second, fresh
    replica of the same store (a restart, or another replica behind the same endpoint)."""
    server = None
    for first in (True, False):
        channel = TeamsChannel(dev_config())
        rt = make_runtime(users=f"teams:{ALICE_AAD}", VPN_DRYRUN_STEP_SECONDS=0, channels=[channel])
        server = TestServer(build_http_app(rt), host="127.0.0.1")
        await server.start_server()
        await rt.opened()
        h = Harness(connector, server, rt)
        if first:
            await h.say("/vpn start")
            await h.settle()
            await server.close()
    return h, server


async def test_file_consent_survives_a_restart(make_runtime):
    """The sealed file waits in the store; after a restart the Allow still uploads it."""
    connector = await FakeConnector(members={}).start()
    try:
        h, second = await started_then_second_replica(connector, make_runtime)
        consent = next(a for c in connector.sent() for a in (c.body.get("attachments") or []) if a["contentType"].endswith("file.consent"))
        upload_url = connector.base_url.split("/teams-prefix/")[0] + "/upload/vpn.conf"
        await h.post(activity("invoke_file_consent", serviceUrl=connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT,
                              conversationId="a:1personal-alice", action="accept", token=consent["content"]["acceptContext"]["token"],
                              session="s", name=consent["name"], uploadUrl=upload_url))
        await h.settle()
        (upload,) = connector.uploads
        assert upload.body["bytes"].startswith("[Interface]\nPrivateKey = ")
        await second.close()
    finally:
        await connector.stop()


# ----- issue 9: file consent, deliverability, chat type, ids, retraction, retries, bad input -----------------

def consent_of(h: Harness, conv: str | None = None) -> dict:
    return next(a for c in h.connector.sent(conv) for a in (c.body.get("attachments") or []) if a["contentType"].endswith("file.consent"))


def local_upload_url(h: Harness) -> str:
    return h.connector.base_url.split("/teams-prefix/")[0] + "/upload/vpn.conf"


async def accept(h: Harness, token: str, *, aad: str = ALICE_AAD, tenant: str = TENANT, upload_url: str | None = None, **extra) -> aiohttp.ClientResponse:
    data = activity("invoke_file_consent", serviceUrl=h.connector.base_url, aadObjectId=aad, tenantId=tenant, conversationId="a:1personal-alice",
                    action="accept", token=token, session="s", name="vpn.conf", uploadUrl=upload_url or local_upload_url(h))
    for key, value in extra.items():
        data["value"][key] = value
    return await h.post(data)


async def test_file_consent_is_bound_to_its_owner_and_tenant(make_teams):
    h = await make_teams()
    await h.say("/vpn start")
    await h.settle()
    token = consent_of(h)["content"]["acceptContext"]["token"]
    assert (await accept(h, token, aad=BOB_AAD)).status == 200  # a well-formed invoke from the wrong person
    await accept(h, token, tenant="11111111-1111-1111-1111-111111111111")  # the owner's id from another tenant
    await h.settle()
    assert h.connector.uploads == [] and "belongs to someone else" in h.everything_sent()
    await accept(h, token)  # the owner still can
    await h.settle()
    assert len(h.connector.uploads) == 1


@pytest.mark.parametrize("url", ["https://evil.example/upload", "http://contoso-my.sharepoint.com/x", "https://sharepoint.com.evil.example/x",
                                 "ftp://contoso-my.sharepoint.com/x", "https://[::1/x", "/relative"])
async def test_file_consent_uploads_only_to_allowed_hosts(make_teams, caplog, url):
    h = await make_teams()
    await h.say("/vpn start")
    await h.settle()
    token = consent_of(h)["content"]["acceptContext"]["token"]
    assert (await accept(h, token, upload_url=url)).status == 400
    await h.settle()
    assert h.connector.uploads == [] and "refused" in caplog.text
    assert not [r for r in caplog.records if r.exc_info]
    await accept(h, token)  # the file is still there for a real consent
    await h.settle()
    assert len(h.connector.uploads) == 1


def test_upload_url_rule():
    from bot.channels.teams.channel import upload_url_allowed

    hosts = ("*.sharepoint.com", "files.example.us")
    assert upload_url_allowed("https://contoso-my.sharepoint.com/personal/a/_api/upload?x=1", hosts)
    assert upload_url_allowed("https://files.example.us/u", hosts)
    assert not upload_url_allowed("https://sharepoint.com/u", hosts)  # "*." means a subdomain
    assert not upload_url_allowed("https://x.sharepoint.com.evil.io/u", hosts)
    assert not upload_url_allowed("http://contoso-my.sharepoint.com/u", hosts)
    assert not upload_url_allowed("http://127.0.0.1:9/u", ("127.0.0.1",))  # http only in dev mode, only loopback
    assert upload_url_allowed("http://127.0.0.1:9/u", ("127.0.0.1",), dev_mode=True)
    assert not upload_url_allowed("http://10.0.0.1/u", ("10.0.0.1",), dev_mode=True)


async def test_group_start_refused_before_provisioning_when_the_app_is_not_installed(make_teams):
    h = await make_teams()
    h.connector.not_installed.add("29:1alice-teams-user-id")
    await h.say("vpn start", kind="groupchat_mention")
    await h.settle()
    text = h.everything_sent("19:groupchat-abc@thread.v2")
    assert "not installed for you personally" in text and "Add for me" in text
    assert await h.runtime.store.sessions(list(SessionState)) == []  # nothing was provisioned or torn down


async def test_group_start_retries_transient_failures_of_the_private_chat(make_teams):
    h = await make_teams()
    h.connector.faults += [("POST", "/v3/conversations", 502, {}), ("POST", "/v3/conversations", 429, {})]
    await h.say("vpn start", kind="groupchat_mention")
    await h.settle()
    assert "data:image/png;base64," in h.everything_sent("a:1personal-29:1alice-teams-user-id")
    assert [s.state for s in await h.runtime.store.sessions(list(SessionState))] == [SessionState.READY]


async def test_group_start_tells_the_real_reason_when_teams_keeps_failing(make_teams):
    h = await make_teams()
    h.connector.faults += [("POST", "/v3/conversations", 503, {})] * 5
    await h.say("vpn start", kind="groupchat_mention")
    await h.settle()
    text = h.everything_sent("19:groupchat-abc@thread.v2")
    assert "not answering right now" in text and "install" not in text.lower()
    assert await h.runtime.store.sessions(list(SessionState)) == []


@pytest.mark.parametrize("change", [{"conversationType": None}, {"isGroup": True}])
async def test_unknown_or_group_chat_type_is_not_private(make_teams, change):
    h = await make_teams()
    data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn start")
    for key, value in change.items():
        if value is None:
            data["conversation"].pop(key)
        else:
            data["conversation"][key] = value
    await h.post(data)
    await h.settle()
    shared = h.everything_sent("a:1personal-alice")
    assert "privately" in shared and "data:image" not in shared and "file.consent" not in shared
    assert "data:image/png;base64," in h.everything_sent("a:1personal-29:1alice-teams-user-id")


async def test_ids_are_said_only_in_personal_chats(make_teams):
    h = await make_teams()
    stranger = "00000000-0000-0000-0000-0000000bad00"
    await h.say("vpn start", kind="channel_mention", aad=stranger)
    installed = activity("installed", serviceUrl=h.connector.base_url, aadObjectId=stranger, tenantId=TENANT)
    installed["conversation"] = {"isGroup": True, "conversationType": "channel", "id": "19:general-xyz@thread.tacv2"}
    await h.post(installed)
    await h.settle()
    # What people can read (text and cards), not the envelope that addresses the activity.
    shared = "\n".join(json.dumps([c.body.get("text"), c.body.get("attachments")]) for c in h.connector.calls
                       if "19:general-xyz" in c.path and c.body)
    assert "not allowed" in shared and "allowlist" in shared and stranger not in shared
    await h.say("/vpn start", aad=stranger)
    await h.settle()
    assert f"teams:{stranger}" in h.everything_sent("a:1personal-alice")


async def test_teardown_replaces_the_qr_card_even_on_another_replica(make_runtime):
    connector = await FakeConnector(members={}).start()
    try:
        h, second = await started_then_second_replica(connector, make_runtime)
        qr = next(c for c in connector.sent() if "data:image/png;base64," in FakeConnector.text_of(c))
        consent = next(c for c in connector.sent() if "file.consent" in FakeConnector.text_of(c))
        await h.say("/vpn stop")
        await h.settle()
        (expired,) = [c for c in connector.updates() if "VPN config expired" in FakeConnector.text_of(c)]
        assert expired.path.endswith("/activities/" + qr.answered_id) and "data:image" not in FakeConnector.text_of(expired)
        assert [c.path.rsplit("/", 1)[1] for c in connector.deletes()] == [consent.answered_id]
        await second.close()
    finally:
        await connector.stop()


async def test_one_retry_rule(make_teams):
    h = await make_teams()
    # A message POST that may have arrived (502) is not repeated: it could post twice.
    h.connector.faults.append(("POST", "/activities", 502, {}))
    await h.say("/vpn help")
    await h.settle()
    assert len([c for c in h.connector.calls if c.method == "POST" and "/activities" in c.path]) == 1
    # Member lookups (GET), updates (PUT) and deletes are safe to repeat.
    channel = h.runtime.channels[0]
    channel._emails.clear()  # forget the cached lookup
    h.connector.faults += [("GET", "/members/", 504, {}), ("GET", "/members/", 503, {})]
    await h.say("/vpn help")
    await h.settle()
    assert len([c for c in h.connector.calls if c.method == "GET"]) == 1 + 3
    assert channel._emails["29:1alice-teams-user-id"][1] == "alice@contoso.com"
    from bot.messages import ConversationRef

    conv = ConversationRef("teams", {"reference": {"conversation": {"id": "a:1personal-alice"}, "serviceUrl": h.connector.base_url,
                                                   "channelId": "msteams", "bot": {"id": "28:vpn-bot-app-id"}}, "conversation_type": "personal"})
    h.connector.faults += [("PUT", "/activities/", 502, {}), ("PUT", "/activities/", 504, {})]
    await channel.send_progress(conv, "step", "1:act-1")
    await h.settle()
    assert len(h.connector.updates()) == 3


async def test_acks_do_not_wait_for_teams(make_teams):
    """Teams gets its answer while every outbound call is still unanswered; the reply follows."""
    h = await make_teams()
    h.connector.gate = asyncio.Event()
    resp = await asyncio.wait_for(h.say("/vpn help"), 10)  # before: the turn waited for the lookup and the reply
    assert resp.status == 201
    assert h.connector.sent() == [] or all(c.answered_id == "" for c in h.connector.sent())
    h.connector.gate.set()
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()


async def test_multitenant_is_accepted_with_a_warning(make_teams, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    h = await make_teams(config=TeamsConfig(app_id="11111111-2222-3333-4444-555555555555", app_password="secret", app_type="MultiTenant"))
    assert (await h.post(activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="x"))).status == 401
    assert "MultiTenant" in caplog.text and "new" in caplog.text


def _malformed(h: Harness) -> list[dict]:
    base = lambda: activity("invoke_file_consent", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT,  # noqa: E731
                            conversationId="a:1personal-alice", action="accept", token="t", session="s", name="x.conf", uploadUrl=local_upload_url(h))
    cases = []
    for value in ("x", 5, None, [], {"action": "accept"}, {"action": "maybe", "context": {}}, {"action": "accept", "context": {"token": 5}},
                  {"action": "accept", "context": {}, "uploadInfo": "u"}, {"action": "accept", "context": {}, "uploadInfo": {"uploadUrl": 7, "name": "x"}}):
        d = base()
        d["value"] = value
        cases.append(d)
    d = base()
    d["value"]["context"]["token"] = "\ud800abc"
    cases.append(d)
    d = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn help")
    d["id"] = "\udc00"
    cases.append(d)
    for key in ("recipient", "conversation", "serviceUrl"):
        d = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn help")
        del d[key]
        cases.append(d)
    d = activity("personal_message", serviceUrl="", aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn help")
    cases.append(d)
    return cases


async def test_malformed_activities_get_400_and_one_log_line(make_teams, caplog):
    import logging

    h = await make_teams()
    cases = _malformed(h)
    for data in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            resp = await h.post(None, raw=json.dumps(data).encode())
        assert resp.status == 400, data
        lines = [r for r in caplog.records if r.name == "bot.channels.teams.channel"]
        assert len(lines) == 1 and not any(r.exc_info for r in caplog.records), data
    await h.settle()
    assert h.connector.calls == [] and await h.runtime.store.sessions(list(SessionState)) == []


@pytest.mark.slow
async def test_a_thousand_starts_give_each_user_exactly_one_config(tmp_path, caplog):
    """1,000 `/vpn start` from distinct users through the Teams endpoint, with the sweeper running on
    the real clock: each user gets exactly one config, and no session is ever "started over"."""
    import logging

    from bot.settings import Settings
    from bot.wiring import Runtime, make_provider

    caplog.set_level(logging.INFO)
    n = 1000
    users = [f"00000000-0000-0000-0001-{i:012d}" for i in range(n)]
    connector = await FakeConnector(member_domain="contoso.com").start()
    settings = Settings.from_env({"VPN_DATA_DIR": str(tmp_path / "data"), "VPN_USERS": ",".join(f"teams:{u}" for u in users),
                                  "VPN_DRYRUN_STEP_SECONDS": "0", "VPN_MAX_SESSIONS": "10000", "WG_POOL": "10.64.0.0/12",
                                  "VPN_SWEEP_SECONDS": "0.5"})
    settings.ops.data_dir.mkdir(parents=True, exist_ok=True)
    channel = TeamsChannel(dev_config())
    runtime = Runtime(settings, make_provider(settings), [channel])
    server = TestServer(build_http_app(runtime), host="127.0.0.1")
    await server.start_server()
    try:
        h = Harness(connector, server, runtime)
        gate = asyncio.Semaphore(50)
        statuses = []

        async def start(user: str) -> None:
            data = activity("personal_message", serviceUrl=connector.base_url, aadObjectId=user, tenantId=TENANT, text="/vpn start")
            data["from"]["id"] = f"29:{user}"
            data["conversation"]["id"] = f"a:1personal-{user}"
            async with gate:
                statuses.append((await h.post(data)).status)

        await asyncio.gather(*(start(u) for u in users))
        assert statuses == [201] * n
        for _ in range(600):  # the sweeper keeps the runner busy: wait for the configs instead
            configs = connector.configs()
            if len(configs) >= n and not h.runtime.runner.names()[1:]:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)  # a duplicate would come after the first config
        configs = connector.configs()
        per_user: dict[str, int] = {}
        for c in configs:
            user = c.path.split("/conversations/a:1personal-", 1)[1].split("/", 1)[0]
            per_user[user] = per_user.get(user, 0) + 1
        assert sorted(per_user) == sorted(users), f"{n - len(per_user)} users got no config"
        assert [u for u, k in per_user.items() if k != 1] == []
        assert "starting over" not in caplog.text
        assert len(await h.runtime.store.sessions([SessionState.READY])) == n
        card = configs[0].body["attachments"][0]["content"]
        image = next(el for el in card["body"] if el["type"] == "Image")
        private = decode_qr(base64.b64decode(image["url"].split(",", 1)[1])).split("PrivateKey = ")[1].split("\n")[0]
        assert private not in caplog.text
    finally:
        await server.close()
        await connector.stop()
