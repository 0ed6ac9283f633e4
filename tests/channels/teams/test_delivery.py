"""Configs delivered privately in Teams (bot/channels/teams/delivery.py): the QR card, file consent,
the 1:1 chat opened from a group chat or channel, and the cards taken back at teardown."""
from __future__ import annotations

import base64
import json

import pytest

from bot.store.model import SessionState
from tests.channels.teams.harness import (
    ALICE_AAD,
    BOB_AAD,
    TENANT,
    accept,
    activity,
    consent_of,
    started_then_second_replica,
)
from tests.fakes.connector import FakeConnector
from tests.support.qrtools import decode_qr


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


# ----- issue 19: delivery that survives bad luck ------------------------------------------------------

def qr_cards(h) -> list:
    return [c for c in h.connector.sent() if c.has_qr]


def held_configs(h) -> list[str]:
    """Token hashes of sealed configs still waiting in the store (not the QR records)."""
    import sqlite3

    db = sqlite3.connect(h.runtime.settings.ops.data_dir / "vpn-bot.sqlite3")
    try:
        rows = db.execute("SELECT token_hash FROM claims WHERE sealed IS NOT NULL").fetchall()
    finally:
        db.close()
    return [r[0] for r in rows if not r[0].startswith("teams-qr:")]


@pytest.mark.parametrize("status", [502, 504])
async def test_a_bad_gateway_on_the_qr_card_does_not_fail_the_session(make_teams, status):
    """19.5: one 502/504 on the config's POST tore the session down."""
    h = await make_teams()
    h.connector.body_faults.append(("POST", "data:image/png;base64,", status, {}))
    await h.say("/vpn start")
    await h.settle()
    assert [s.state for s in await h.runtime.store.sessions(list(SessionState))] == [SessionState.READY]
    assert len(qr_cards(h)) == 2 and consent_of(h)  # the repeat, then the file
    assert "scan the QR code, or allow the file" in h.everything_sent()


@pytest.mark.parametrize("status", [502, 400])
async def test_a_failed_consent_card_is_not_fatal_and_the_qr_card_is_still_retracted(make_teams, status):
    """19.5: the QR card is the config; the file is a convenience. Its card failing cost the session,
    and left the QR card (recorded only after both) never retracted."""
    h = await make_teams()
    h.connector.body_faults.append(("POST", "file.consent", status, {}))
    await h.say("/vpn start")
    await h.settle()
    assert [s.state for s in await h.runtime.store.sessions(list(SessionState))] == [SessionState.READY]
    assert "scan the QR code (I could not offer it as a file this time)" in h.everything_sent()
    assert held_configs(h) == []  # nobody can allow the file: its sealed copy is gone
    (qr,) = qr_cards(h)
    await h.say("/vpn stop")
    await h.settle()
    (expired,) = [c for c in h.connector.updates() if "VPN config expired" in FakeConnector.text_of(c)]
    assert expired.path.endswith("/activities/" + qr.answered_id)


async def test_the_qr_card_is_retracted_when_delivery_fails_after_it(make_teams):
    """19.5: each sent activity is recorded at once, so a later failure cannot strand the QR card."""
    h = await make_teams()
    # The QR card goes out; then Teams refuses the consent card.
    h.connector.body_faults.append(("POST", "file.consent", 403, {"error": {"code": "MessageWritesBlocked"}}))
    await h.say("/vpn start")
    await h.settle()
    (qr,) = qr_cards(h)
    await h.say("/vpn stop")
    await h.settle()
    assert [c for c in h.connector.updates() if c.path.endswith("/activities/" + qr.answered_id) and "VPN config expired" in FakeConnector.text_of(c)]


async def test_the_qr_image_stays_within_teams_card_image_limit(make_teams):
    """19.8: a long config (many AllowedIPs) drew a QR image past Teams' 1,024 px, which Teams may not show."""
    import io

    from PIL import Image

    networks = ", ".join(f"10.{i}.{j}.0/24" for i in range(1, 9) for j in range(0, 12))
    h = await make_teams(WG_ALLOWED_IPS=networks)
    await h.say("/vpn start")
    await h.settle()
    (qr,) = qr_cards(h)
    image = next(el for el in qr.body["attachments"][0]["content"]["body"] if el["type"] == "Image")
    png = base64.b64decode(image["url"].split(",", 1)[1])
    assert max(Image.open(io.BytesIO(png)).size) <= 1024
    config = decode_qr(png)
    assert "10.8.11.0/24" in config and len(config) > 1500
