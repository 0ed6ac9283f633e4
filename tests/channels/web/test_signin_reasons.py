"""A refused token says why (issue 19.11): the 401's `reason` code, one log line without the token
(WARNING for what may be a misconfiguration), and a sentence for every code on the page."""
from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.channels.web import signin_local as local
from bot.channels.web.token_refusals import REASONS
from tests.fakes.entra import API_CLIENT_ID, TENANT, FakeEntra
from tests.support.webharness import SECRET, Client, WebApp

ALICE = "alice@example.org"
OTHER_TENANT = "99999999-9999-9999-9999-999999999999"
APP_JS = Path(__file__).resolve().parents[3] / "web" / "app.js"


@pytest.fixture
async def entra():
    fake = await FakeEntra().start()
    yield fake
    await fake.close()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def _entra_tokens(entra: FakeEntra) -> dict[str, str]:
    """One token per Entra misconfiguration (or expiry), as a browser would bring it."""
    now = int(time.time())
    return {
        "expired": entra.issue(exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "v1_token": entra.issue(ver="1.0", iss=f"https://sts.windows.net/{TENANT}/", aud=f"api://{API_CLIENT_ID}"),
        "wrong_audience": entra.issue(aud="00000003-0000-0000-c000-000000000000"),  # a Microsoft Graph token
        "missing_scope": entra.issue(scp=None, roles=["Something.All"]),
        "wrong_tenant": entra.issue(tid=OTHER_TENANT),
        "wrong_issuer": entra.issue(iss=f"{entra.base}/{OTHER_TENANT}/v2.0"),
        "bad_signature": entra.issue(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "unknown_key": entra.issue(kid="not-published"),
        "not_yet_valid": entra.issue(nbf=now + 3600, iat=now),
        "malformed": "a.b.c",
    }


async def _refusal(http, base: str, token: str | None) -> dict:
    async with http.get(base + "/api/me", headers={"Authorization": f"Bearer {token}"} if token else {}) as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        return json.loads(await resp.read())


def _refusal_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bot.channels.web.signin" and "refused" in r.getMessage()]


async def test_each_refused_entra_token_names_its_reason_and_logs_one_line(entra, http, tmp_path, caplog):
    app = await WebApp(tmp_path / "data", VPN_ENTRA_TENANT_ID=TENANT, VPN_ENTRA_API_AUDIENCE=API_CLIENT_ID, VPN_ENTRA_AUTHORITY=entra.authority,
                       VPN_USERS=f"teams:{entra.user_oid}", VPN_METRICS_PORT="0").start()
    try:
        assert (await Client(http, app.base, entra.issue()).call("GET", "/api/me"))[0] == 200  # the keys are loaded
        tokens = _entra_tokens(entra)
        for reason, token in tokens.items():
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="bot.channels.web.signin"):
                body = await _refusal(http, app.base, token)
            assert body == {"reason": reason, "error": REASONS[reason]}, reason
            lines = _refusal_lines(caplog)
            assert len(lines) == 1, (reason, [r.getMessage() for r in lines])
            assert lines[0].levelno == (logging.INFO if reason == "expired" else logging.WARNING), reason
            assert reason in lines[0].getMessage()
            assert token not in caplog.text and all(part not in caplog.text for part in token.split(".") if len(part) > 8)  # no part of the token
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="bot.channels.web.signin"):
            assert await _refusal(http, app.base, None) == {"reason": "no_token", "error": REASONS["no_token"]}
        assert _refusal_lines(caplog) == []  # an anonymous request is not worth a line
    finally:
        await app.close()


async def test_local_tokens_name_their_reason(http, tmp_path, caplog):
    app = await WebApp(tmp_path / "data", VPN_USERS=f"local:{ALICE}", VPN_METRICS_PORT="0").start()
    try:
        await app.add_user(ALICE)
        alice = await Client(http, app.base).login(ALICE)
        user = await app.runtime.store.get_user(ALICE)
        old = local.LocalAuth(SECRET, app.runtime.store, lambda: datetime.now(timezone.utc)).issue(user, datetime.now(timezone.utc) - timedelta(hours=9))
        forged = jwt.encode({"iss": local.ISSUER, "aud": local.AUDIENCE, "sub": f"local:{ALICE}", "email": ALICE, "pwv": "x",
                             "iat": int(time.time()), "exp": int(time.time()) + 60}, "another secret of at least 32 bytes!!", algorithm="HS256")
        with caplog.at_level(logging.INFO, logger="bot.channels.web.signin"):
            assert (await _refusal(http, app.base, old))["reason"] == "expired"
            assert (await _refusal(http, app.base, forged))["reason"] == "bad_signature"
            await app.add_user(ALICE)  # a new password ends every token issued before
            assert (await _refusal(http, app.base, alice.token))["reason"] == "account_changed"
            rs256 = FakeEntra().issue()  # Microsoft sign-in is off here
            assert (await _refusal(http, app.base, rs256))["reason"] == "entra_off"
        levels = [r.levelno for r in _refusal_lines(caplog)]
        assert levels == [logging.INFO, logging.WARNING, logging.INFO, logging.WARNING]
    finally:
        await app.close()


def test_the_page_has_a_sentence_for_every_reason():
    """The page names each code in its own words (web/app.js: REASON_WORDS); none is left to a generic line."""
    script = APP_JS.read_text()
    block = re.search(r"const REASON_WORDS = \{(.*?)\n  \};", script, re.S)
    assert block, "web/app.js has no REASON_WORDS"
    named = set(re.findall(r"^\s+(\w+):", block.group(1), re.M))
    assert named >= set(REASONS), set(REASONS) - named
