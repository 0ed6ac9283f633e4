"""What comes in (bot/channels/teams/activities.py): malformed activities refused with 400, the
conversation type read fail-closed, the sender's identity, upload URLs."""
from __future__ import annotations

import asyncio
import json

import pytest

from bot.store.model import SessionState
from tests.channels.teams.harness import (
    ALICE_AAD,
    TENANT,
    Harness,
    accept,
    activity,
    consent_of,
    dev_config,
    local_upload_url,
)


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


async def test_email_rules_use_the_verified_member_email(make_teams):
    h = await make_teams(users="domain:contoso.com")
    await h.say("/vpn help")
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()
    assert any("/members/29:1alice-teams-user-id" in c.path for c in h.connector.calls)


def test_upload_url_rule():
    from bot.channels.teams.activities import upload_url_allowed

    hosts = ("*.sharepoint.com", "files.example.us")
    assert upload_url_allowed("https://contoso-my.sharepoint.com/personal/a/_api/upload?x=1", hosts)
    assert upload_url_allowed("https://files.example.us/u", hosts)
    assert not upload_url_allowed("https://sharepoint.com/u", hosts)  # "*." means a subdomain
    assert not upload_url_allowed("https://x.sharepoint.com.evil.io/u", hosts)
    assert not upload_url_allowed("http://contoso-my.sharepoint.com/u", hosts)
    assert not upload_url_allowed("http://127.0.0.1:9/u", ("127.0.0.1",))  # http only in dev mode, only loopback
    assert upload_url_allowed("http://127.0.0.1:9/u", ("127.0.0.1",), dev_mode=True)
    assert not upload_url_allowed("http://10.0.0.1/u", ("10.0.0.1",), dev_mode=True)


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


# ----- issue 19: whom to believe, and what to serve -------------------------------------------------------

OTHER_TENANT = "11111111-1111-1111-1111-111111111111"
MALLORY_AAD = "00000000-0000-0000-0000-0000000e0e0e"


@pytest.mark.parametrize("role, tenant", [("guest", TENANT), ("anonymous", TENANT), ("user", OTHER_TENANT), (None, TENANT), ("user", None)])
async def test_a_roster_email_counts_only_for_members_of_a_served_tenant(make_teams, role, tenant):
    """19.1: a guest's (or another tenant's) roster email is whatever their home directory says."""
    h = await make_teams(users="domain:contoso.com")
    member = {"id": "29:1mallory", "aadObjectId": MALLORY_AAD, "email": "mallory@contoso.com", "userPrincipalName": "mallory@contoso.com"}
    if role is not None:
        member["userRole"] = role
    if tenant is not None:
        member["tenantId"] = tenant
    h.connector.members["29:1mallory"] = member
    data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=MALLORY_AAD, tenantId=TENANT, text="/vpn start")
    data["from"]["id"] = "29:1mallory"
    data["conversation"]["id"] = "a:1personal-mallory"
    await h.post(data)
    await h.settle()
    assert "not allowed" in h.everything_sent("a:1personal-mallory")
    assert await h.runtime.store.sessions(list(SessionState)) == []


async def test_a_member_of_an_allowed_tenant_is_matched_by_email(make_teams):
    """19.1, the other side: TEAMS_ALLOWED_TENANTS names the tenants whose members' emails count."""
    h = await make_teams(users="domain:contoso.com", config=dev_config(allowed_tenants=(TENANT, OTHER_TENANT)))
    h.connector.members["29:1mallory"] = {"id": "29:1mallory", "aadObjectId": MALLORY_AAD, "email": "mallory@contoso.com",
                                          "userRole": "user", "tenantId": OTHER_TENANT}
    data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=MALLORY_AAD, tenantId=OTHER_TENANT, text="/vpn help")
    data["from"]["id"] = "29:1mallory"
    await h.post(data)
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()


@pytest.mark.parametrize("app_type, served", [("SingleTenant", False), ("UserAssignedMSI", False), ("MultiTenant", True)])
async def test_allowed_tenants_default_to_the_bots_own_tenant(make_teams, app_type, served):
    """19.1: without TEAMS_ALLOWED_TENANTS a single-tenant bot serves its own tenant only."""
    h = await make_teams(config=dev_config(app_type=app_type, tenant_id=OTHER_TENANT))
    await h.say("/vpn help")  # from TENANT
    await h.settle()
    assert ("I hand out WireGuard" in h.everything_sent()) is served


def test_the_tenants_served():
    from bot.channels.teams.config import TeamsConfig

    assert TeamsConfig(tenant_id=TENANT).tenants == (TENANT,)  # SingleTenant is the default
    assert TeamsConfig(app_type="UserAssignedMSI", tenant_id=TENANT).tenants == (TENANT,)
    assert TeamsConfig(app_type="MultiTenant", tenant_id=TENANT).tenants == ()
    assert TeamsConfig(tenant_id=TENANT, allowed_tenants=(OTHER_TENANT,)).tenants == (OTHER_TENANT,)
    assert TeamsConfig(dev_mode=True).tenants == ()  # no tenant configured: any


@pytest.mark.parametrize("channel_id", ["webchat", "directline", "emulator"])
async def test_activities_from_other_channels_are_dropped(make_teams, caplog, channel_id):
    """19.2: Web Chat and Direct Line reach the same endpoint, with a channelData the client writes."""
    import logging

    h = await make_teams()
    data = activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="/vpn start")
    data["channelId"] = channel_id
    with caplog.at_level(logging.INFO):
        resp = await h.post(data)
        await h.settle()
    assert resp.status < 300
    assert h.connector.calls == [] and await h.runtime.store.sessions(list(SessionState)) == []
    (line,) = [r for r in caplog.records if r.name.startswith("bot.channels.teams")]
    assert channel_id in line.getMessage() and "dropped" in line.getMessage()
    invoke = activity("invoke_file_consent", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT,
                      conversationId="a:1personal-alice", action="decline", token="t", session="s", name="x.conf", uploadUrl="")
    invoke["channelId"] = channel_id
    assert (await h.post(invoke)).status == 403


async def test_a_person_joining_is_not_looked_up_before_the_ack(make_teams):
    """19.7: botbuilder's default handler called TeamsInfo.get_member inline for every new member."""
    h = await make_teams()
    h.connector.gate = asyncio.Event()  # Teams answers nothing until the end of the test
    joined = activity("installed", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT)
    joined["membersAdded"] = [{"id": "29:1bob-teams-user-id"}]
    resp = await asyncio.wait_for(h.post(joined), 5)
    assert resp.status < 300
    await h.settle()
    assert h.connector.calls == []
    installed = activity("installed", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT)
    installed["membersAdded"] = [{"id": "29:1bob-teams-user-id"}, {"id": "28:vpn-bot-app-id"}]
    resp = await asyncio.wait_for(h.post(installed), 5)  # the welcome goes after the ack
    assert resp.status < 300
    h.connector.gate.set()
    await h.settle()
    assert "Hi! I hand out short-lived WireGuard VPN access" in h.everything_sent()
    assert not [c for c in h.connector.calls if "/members/29:1bob" in c.path]
