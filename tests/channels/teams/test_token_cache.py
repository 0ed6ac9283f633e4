"""Channel tokens botbuilder verified are remembered for a few minutes (bot/channels/teams/auth.py
VerifiedTokens, InboundTokens), and what depends on the activity is still checked on every request:
with the good token's entry present, a token for another service URL, a tampered copy of it and an
expired one are all refused as before."""
from __future__ import annotations

import time

import jwt

from bot.channels.teams.auth import VerifiedTokens
from bot.store.model import SessionState
from tests.channels.teams.test_auth import APP_ID, bf, entra, message, prod_config  # noqa: F401 (fixtures)

ISSUER = "https://api.botframework.com"
SERVICE = "https://smba.trafficmanager.net/emea/"


def claims(**kw) -> dict:
    return {"iss": ISSUER, "aud": APP_ID, "serviceurl": SERVICE, "exp": 1_000_000 + 3600, "nbf": 1_000_000 - 5, **kw}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_hit_needs_the_same_token_channel_service_url_and_app_id_and_time_left():
    clock = Clock()
    tokens = VerifiedTokens(APP_ID, ttl=300, clock=clock)
    tokens.remember("Bearer t1", "msteams", SERVICE, claims())
    assert tokens.accepts("Bearer t1", "msteams", SERVICE)
    assert not tokens.accepts("Bearer t2", "msteams", SERVICE)  # another token (a tampered copy is one)
    assert not tokens.accepts("Bearer t1", "webchat", SERVICE)  # its key's endorsement was checked for msteams
    assert not tokens.accepts("Bearer t1", "msteams", "https://smba.evil.example/")
    assert not VerifiedTokens("another-app", clock=clock).accepts("Bearer t1", "msteams", SERVICE)
    clock.now += 299
    assert tokens.accepts("Bearer t1", "msteams", SERVICE)
    clock.now += 1  # verified again at most every ttl seconds, whatever its exp says
    assert not tokens.accepts("Bearer t1", "msteams", SERVICE)


def test_a_token_is_never_a_hit_past_its_exp():
    clock = Clock()
    tokens = VerifiedTokens(APP_ID, ttl=300, clock=clock)
    tokens.remember("Bearer t1", "msteams", SERVICE, claims(exp=1_000_000 + 60))
    clock.now += 59
    assert tokens.accepts("Bearer t1", "msteams", SERVICE)
    clock.now += 1
    assert not tokens.accepts("Bearer t1", "msteams", SERVICE)


def test_only_channel_tokens_for_this_activity_and_bot_are_kept_and_the_cache_is_bounded():
    clock = Clock()
    tokens = VerifiedTokens(APP_ID, size=3, clock=clock)
    for name, bad in {"emulator": claims(iss="https://sts.windows.net/x/"), "other bot": claims(aud="someone-else"),
                      "other url": claims(serviceurl="https://elsewhere/"), "no exp": claims(exp=None),
                      "skill": claims(ver="2.0", azp="another-bot", appid="another-bot")}.items():
        tokens.remember(f"Bearer {name}", "msteams", SERVICE, bad)
        assert not tokens.accepts(f"Bearer {name}", "msteams", SERVICE), name
    assert not VerifiedTokens("").accepts("Bearer x", "msteams", SERVICE)  # dev mode: nothing kept
    for i in range(4):
        tokens.remember(f"Bearer {i}", "msteams", SERVICE, claims())
    assert [tokens.accepts(f"Bearer {i}", "msteams", SERVICE) for i in range(4)] == [False, True, True, True]


def _teams(h):
    (channel,) = [c for c in h.runtime.channels if c.name == "teams"]
    return channel


async def test_with_a_good_token_remembered_bad_ones_are_still_refused(make_teams, bf, entra):  # noqa: F811
    h = await make_teams(config=prod_config(bf, entra))
    inbound = _teams(h)._inbound
    verified_by_botbuilder = 0
    authenticate = inbound._authentication.authenticate_request

    async def counting(activity, header):
        nonlocal verified_by_botbuilder
        verified_by_botbuilder += 1
        return await authenticate(activity, header)

    inbound._authentication.authenticate_request = counting
    good = bf.issue(APP_ID, h.connector.base_url)
    for _ in range(3):
        assert (await h.post(message(h), headers={"Authorization": f"Bearer {good}"})).status == 201
    await h.settle()
    assert verified_by_botbuilder == 1  # then remembered
    h.connector.calls.clear()

    # Another service URL with the same (remembered) token: its serviceurl claim does not match.
    elsewhere = {**message(h, "/vpn start"), "serviceUrl": "https://smba.evil.example/"}
    assert (await h.post(elsewhere, headers={"Authorization": f"Bearer {good}"})).status == 401
    # A tampered copy: the same claims, the signature's last character changed.
    head, body, signature = good.split(".")
    tampered = ".".join((head, body, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")))
    assert (await h.post(message(h, "/vpn start"), headers={"Authorization": f"Bearer {tampered}"})).status == 401
    # Claims changed, signature kept.
    forged_body = jwt.utils.base64url_encode(jwt.utils.base64url_decode(body).replace(b'"aud"', b'"aud" ')).decode()
    assert (await h.post(message(h, "/vpn start"), headers={"Authorization": f"Bearer {head}.{forged_body}.{signature}"})).status == 401
    # An expired token whose entry is present (as if verified before it expired): refused, not served from the cache.
    now = int(time.time())
    expired = bf.issue(APP_ID, h.connector.base_url, exp=now - 3600, nbf=now - 7200)
    inbound.verified.remember(f"Bearer {expired}", "msteams", h.connector.base_url,
                              jwt.decode(expired, options={"verify_signature": False}))
    assert (await h.post(message(h, "/vpn start"), headers={"Authorization": f"Bearer {expired}"})).status == 401
    await h.settle()
    assert h.connector.calls == [] and await h.runtime.store.sessions(list(SessionState)) == []
    # The good token still works, from the cache.
    before = verified_by_botbuilder
    assert (await h.post(message(h), headers={"Authorization": f"Bearer {good}"})).status == 201
    assert verified_by_botbuilder == before
