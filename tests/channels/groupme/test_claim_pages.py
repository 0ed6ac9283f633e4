"""The claim pages: secrets only through the one-time link, its expiry, GroupMe login, cross-site posts."""
from __future__ import annotations

import base64
import re

import aiohttp

from bot.store.model import SessionState
from tests.channels.groupme.harness import ALICE, BOB
from tests.support.qrtools import decode_qr


async def test_happy_path_secrets_only_through_the_one_time_link(make_harness):
    h = await make_harness()
    assert await h.callback(h.message("/vpn start")) == 200
    await h.settle()
    (s,) = await h.runtime.store.sessions([SessionState.READY])
    group = "\n".join(h.gm.post_texts())
    assert "starting VPN session" in group and "not here" in group and "direct message" in group
    assert "PrivateKey" not in group and "/claim/" not in group and "data:image" not in group
    (dm,) = h.gm.dms
    assert dm["recipient_id"] == ALICE and "/claim/" in dm["text"] and "PrivateKey" not in dm["text"]

    link = h.link()
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # link previews and scanners fetch links: GET consumes nothing
            async with http.get(link) as resp:
                assert resp.status == 200 and "Reveal my VPN config" in await resp.text()
                assert resp.headers["Cache-Control"] == "no-store" and resp.headers["Referrer-Policy"] == "no-referrer"
                assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        async with http.post(link) as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
            assert "script" not in page.lower()
        config = base64.b64decode(re.search(r'href="data:application/octet-stream;base64,([^"]+)"', page).group(1)).decode()
        qr = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
        assert decode_qr(qr) == config
        assert f"Endpoint = {s.endpoint}" in config and config.startswith("[Interface]\nPrivateKey = ")
        async with http.post(link) as resp:
            assert resp.status == 410 and "already been used" in await resp.text()
        async with http.get(link) as resp:
            assert resp.status == 410

    # The store never held the config in the clear, and after the claim not even sealed.
    private = config.split("PrivateKey = ")[1].split("\n")[0]
    for path in h.runtime.settings.ops.data_dir.iterdir():
        assert private.encode() not in path.read_bytes()
    claim = await h.runtime.store.get_claim(__import__("bot.one_time_configs", fromlist=["token_hash"]).token_hash(link.rsplit("/", 1)[1]))
    assert claim.sealed is None and claim.used_at is not None


async def test_link_expires(make_harness, clock):
    h = await make_harness()
    await h.callback(h.message("/vpn start"))
    await h.settle()
    clock.advance(minutes=11)
    await h.runtime.service.sweep()  # erases sealed configs past expiry
    async with aiohttp.ClientSession() as http:
        async with http.post(h.link()) as resp:
            assert resp.status == 410 and "expired" in await resp.text()


async def test_oauth_binds_the_link_to_the_requester(make_harness):
    h = await make_harness(oauth="client-1")
    h.gm.users_by_token = {"alice-token": {"id": ALICE, "name": "Alice"}, "bob-token": {"id": BOB, "name": "Bob"}}
    await h.callback(h.message("/vpn start"))
    await h.settle()
    link = h.link()
    token = link.rsplit("/", 1)[1]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(link) as resp:
            page = await resp.text()
            assert "Log in with GroupMe" in page and "client_id=client-1" in page
        async with http.post(link) as resp:
            assert resp.status == 403  # not logged in: nothing revealed
        async with http.get(f"{h.base}/claim/oauth/callback?access_token=bob-token") as resp:
            assert resp.status == 403 and "belongs to someone else" in await resp.text()
        async with http.get(f"{h.base}/claim/oauth/callback?access_token=alice-token", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == f"/claim/{token}"
        async with http.get(link) as resp:
            assert "Reveal my VPN config" in await resp.text()
        async with http.post(link) as resp:
            assert resp.status == 200 and "data:image/png;base64," in await resp.text()


async def test_cross_site_posts_are_refused(make_harness):
    h = await make_harness()
    await h.callback(h.message("/vpn start"))
    await h.settle()
    async with aiohttp.ClientSession() as http:
        async with http.post(h.link(), headers={"Sec-Fetch-Site": "cross-site"}) as resp:
            assert resp.status == 403
        async with http.post(h.link(), headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
        async with http.get(h.link()) as resp:
            assert "Reveal my VPN config" in await resp.text()  # still unused
