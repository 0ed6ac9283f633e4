"""Teams in production mode (MicrosoftAppId set, auth on), end to end: the real app, botbuilder's real
token validation against a fake Bot Framework (OpenID metadata + JWKS), the bot's own token from a
fake Entra (client credentials over https, or the managed-identity endpoint), a fake Bot Connector."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from bot.channels.teams.config import TeamsConfig
from bot.store.model import SessionState
from tests.channels.teams.harness import ALICE_AAD, TENANT, activity
from tests.fakes.botframework_auth import FakeBotFramework, FakeEntraTokens, new_key

APP_ID = "3c5e7a90-1b2d-4e6f-8a9b-0c1d2e3f4a5b"
APP_SECRET = "app-secret-value"
EMULATOR_ISSUER = "https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/"


@pytest.fixture
async def bf():
    fake = await FakeBotFramework().start()
    yield fake
    await fake.close()


@pytest.fixture
async def entra(tmp_path, monkeypatch):
    fake = await FakeEntraTokens(tmp_path, TENANT, APP_ID, APP_SECRET).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))  # MSAL (requests) trusts the fake's certificate
    yield fake
    await fake.close()


def prod_config(bf: FakeBotFramework, entra: FakeEntraTokens, **kw) -> TeamsConfig:
    values = dict(app_id=APP_ID, app_password=APP_SECRET, app_type="SingleTenant", tenant_id=TENANT, backoff=0.01,
                  channel_keys_url=bf.metadata_url, emulator_keys_url=bf.metadata_url.replace("/v1/", "/emulator/v1/"),
                  login_url=entra.login_url, validate_authority=False)
    values.update(kw)
    return TeamsConfig(**values)


def message(h, text: str = "/vpn help") -> dict:
    return activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text=text)


async def test_a_signed_activity_is_served_and_every_send_carries_the_bots_token(make_teams, bf, entra):
    h = await make_teams(config=prod_config(bf, entra))
    for n in range(3):
        data = message(h, "/vpn help" if n else "/vpn start")
        resp = await h.post(data, headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})
        assert resp.status == 201
    await h.settle()
    calls = h.connector.calls
    assert len(calls) >= 5 and "starting VPN session" in h.everything_sent()
    (token,) = entra.issued  # one token for every call: cached
    assert entra.token_requests == [("client_credentials", APP_ID)]
    assert all(c.headers.get("Authorization") == f"Bearer {token}" for c in calls)
    assert bf.fetches == {"metadata": 1, "jwks": 1}  # keys downloaded once for all requests
    assert [s.state for s in await h.runtime.store.sessions(list(SessionState))] == [SessionState.READY]


def _bad_tokens(bf: FakeBotFramework, service_url: str) -> dict[str, str | None]:
    now = int(time.time())
    return {
        "no header": None,
        "not bearer": f"Basic {bf.issue(APP_ID, service_url)}",
        "wrong key": f"Bearer {bf.issue(APP_ID, service_url, key=new_key())}",
        "unknown kid": f"Bearer {bf.issue(APP_ID, service_url, key=new_key(), kid='someone-elses-key')}",
        "no kid": f"Bearer {bf.issue(APP_ID, service_url, headers={'kid': None})}",
        "wrong issuer": f"Bearer {bf.issue(APP_ID, service_url, iss='https://evil.example')}",
        "wrong audience": f"Bearer {bf.issue('99999999-9999-9999-9999-999999999999', service_url)}",
        "no audience": f"Bearer {bf.issue(APP_ID, service_url, aud=None)}",
        "expired": f"Bearer {bf.issue(APP_ID, service_url, exp=now - 3600, nbf=now - 7200)}",
        "not yet valid": f"Bearer {bf.issue(APP_ID, service_url, nbf=now + 3600)}",
        "alg none": f"Bearer {bf.issue(APP_ID, service_url, algorithm='none')}",
        "alg HS256 keyed with the public key id": f"Bearer {bf.issue(APP_ID, service_url, algorithm='HS256', key='k' * 32)}",
        "other service url": f"Bearer {bf.issue(APP_ID, 'https://smba.evil.example/')}",
        "emulator issuer, wrong key": f"Bearer {bf.issue(APP_ID, service_url, key=new_key(), iss=EMULATOR_ISSUER, appid=APP_ID, ver='1.0')}",
        "garbage": "Bearer a.b.c",
    }


async def test_bad_tokens_get_401_and_no_work(make_teams, bf, entra):
    h = await make_teams(config=prod_config(bf, entra))
    # Warm the key cache with one good request, so "unknown kid" below is a real cache miss.
    assert (await h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})).status == 201
    await h.settle()
    h.connector.calls.clear()
    statuses = {}
    for name, header in _bad_tokens(bf, h.connector.base_url).items():
        resp = await h.post(message(h, "/vpn start"), headers={"Authorization": header} if header else None)
        statuses[name] = resp.status
    await h.settle()
    assert statuses == {name: 401 for name in statuses}
    assert h.connector.calls == [] and await h.runtime.store.sessions(list(SessionState)) == []
    # An unknown key id may refresh the keys at most once an hour, not once per request.
    assert bf.fetches["jwks"] <= 2


async def test_a_key_not_endorsed_for_teams_is_refused(make_teams, bf, entra):
    other = new_key()
    bf.extra_keys["webchat-only"] = (other, ("webchat",))
    h = await make_teams(config=prod_config(bf, entra))
    token = bf.issue(APP_ID, h.connector.base_url, key=other, kid="webchat-only")
    assert (await h.post(message(h), headers={"Authorization": f"Bearer {token}"})).status == 401
    await h.settle()
    assert h.connector.calls == []


async def test_keys_are_refreshed_once_for_a_new_key_id(make_teams, bf, entra):
    """Microsoft rotates keys: a token signed with a key published after the last download still works."""
    h = await make_teams(config=prod_config(bf, entra))
    assert (await h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})).status == 201
    rotated = new_key()
    bf.extra_keys["bf-key-2"] = (rotated, ("msteams",))
    from botframework.connector.auth import JwtTokenExtractor

    from bot.channels.teams.auth import _SigningKeys

    for keys in JwtTokenExtractor.metadataCache.values():
        if isinstance(keys, _SigningKeys):
            keys.fetched_at -= 2 * 3600  # the last download was two hours ago
    token = bf.issue(APP_ID, h.connector.base_url, key=rotated, kid="bf-key-2")
    assert (await h.post(message(h), headers={"Authorization": f"Bearer {token}"})).status == 201
    assert bf.fetches["jwks"] == 2
    await h.settle()


async def test_unreachable_keys_are_401_and_retried_later_not_per_request(make_teams, bf, entra, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    await bf.close()  # nothing listens there any more
    h = await make_teams(config=prod_config(bf, entra))
    for _ in range(5):
        resp = await h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})
        assert resp.status == 401
    assert caplog.text.count("could not download the Bot Framework signing keys") == 1
    assert "Traceback" not in caplog.text


@pytest.mark.slow
async def test_a_slow_key_download_does_not_block_the_event_loop(make_teams, bf, entra):
    bf.jwks_delay = 2.0
    h = await make_teams(config=prod_config(bf, entra))
    signed = asyncio.ensure_future(h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"}))
    while bf.fetches["jwks"] == 0:  # the key download has started
        await asyncio.sleep(0.01)
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        async with http.get(h.server.make_url("/healthz")) as resp:
            assert resp.status == 200
    healthz = time.monotonic() - started
    assert healthz < 1.0, f"/healthz took {healthz:.2f}s while the keys downloaded"
    assert not signed.done()
    assert (await signed).status == 201
    await h.settle()


async def test_wrong_client_secret_is_reported_not_crashed(make_teams, bf, entra, caplog):
    import logging

    caplog.set_level(logging.INFO)
    h = await make_teams(config=prod_config(bf, entra, app_password="wrong-secret"))
    resp = await h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})
    assert resp.status == 201
    await h.settle()
    assert h.connector.calls == [] and entra.issued == []
    assert "could not get the bot's token" in caplog.text and "wrong-secret" not in caplog.text


async def test_user_assigned_managed_identity_token_on_every_send(make_teams, bf, entra, monkeypatch):
    monkeypatch.setenv("IDENTITY_ENDPOINT", entra.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", entra.identity_header)
    h = await make_teams(config=prod_config(bf, entra, app_type="UserAssignedMSI", app_password=""))
    for _ in range(2):
        resp = await h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})
        assert resp.status == 201
    await h.settle()
    (token,) = entra.issued
    assert entra.token_requests == [("msi", APP_ID)]
    assert h.connector.calls and all(c.headers.get("Authorization") == f"Bearer {token}" for c in h.connector.calls)


@pytest.mark.slow
async def test_a_key_download_that_never_ends_is_cut_off(make_teams, bf, entra, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    bf.jwks_delay = 5.0
    h = await make_teams(config=prod_config(bf, entra, auth_timeout=0.5))
    started = time.monotonic()
    resp = await h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})
    assert resp.status == 401 and time.monotonic() - started < 3
    assert "could not download the Bot Framework signing keys" in caplog.text and "TimeoutError" in caplog.text


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


async def test_multitenant_is_accepted_with_a_warning(make_teams, caplog):
    import logging

    caplog.set_level(logging.WARNING)
    h = await make_teams(config=TeamsConfig(app_id="11111111-2222-3333-4444-555555555555", app_password="secret", app_type="MultiTenant"))
    assert (await h.post(activity("personal_message", serviceUrl=h.connector.base_url, aadObjectId=ALICE_AAD, tenantId=TENANT, text="x"))).status == 401
    assert "MultiTenant" in caplog.text and "new" in caplog.text


async def test_a_401_from_the_connector_renews_the_bots_token_once(make_teams, bf, entra, caplog):
    """19.8: a token revoked or rotated before it expires was kept (and refused) until it expired."""
    import logging

    caplog.set_level(logging.WARNING)
    h = await make_teams(config=prod_config(bf, entra))
    h.connector.faults.append(("POST", "/activities", 401, {"error": {"code": "Unauthorized", "message": "token revoked"}}))
    resp = await h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})
    assert resp.status == 201
    await h.settle()
    assert "I hand out WireGuard" in h.everything_sent()
    first, second = entra.issued
    refused, retried = [c for c in h.connector.calls if c.method == "POST"]
    assert refused.headers["Authorization"] == f"Bearer {first}" and retried.headers["Authorization"] == f"Bearer {second}"
    assert first not in caplog.text and second not in caplog.text
    # Renewed once per call: a connector that refuses every token does not get asked forever.
    h.connector.faults += [("POST", "/activities", 401, {})] * 3
    before = len(h.connector.calls)
    await h.post(message(h), headers={"Authorization": f"Bearer {bf.issue(APP_ID, h.connector.base_url)}"})
    await h.settle()
    assert len(h.connector.calls) - before == 2 and len(entra.issued) == 3
