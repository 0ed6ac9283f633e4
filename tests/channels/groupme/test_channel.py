"""GroupMe end to end: real HTTP into the aiohttp app, real HTTP out to a fake GroupMe API."""
from __future__ import annotations

import base64
import itertools
import re
import socket

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from bot.channels.groupme.channel import GroupMeChannel

from bot.channels.groupme.config import GroupMeConfig
from bot.channels.groupme.api import split_text
from bot.store.model import SessionState
from bot.wiring import build_http_app
from tests.fakes.groupme import FakeGroupMe
from tests.support.qrtools import decode_qr

GROUP = "4242"
SECRET = "cb-secret-0123456789abcdef"
ALICE, BOB, ROOT = "111", "222", "999"
_ids = itertools.count(1_000_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Harness:
    def __init__(self, gm: FakeGroupMe, server: TestServer, channel: GroupMeChannel, base: str, runtime) -> None:
        self.gm, self.server, self.channel, self.base = gm, server, channel, base
        self.runtime = runtime

    def message(self, text, user=ALICE, *, group=GROUP, sender_type="user", system=False, msg_id=None, store=True) -> dict:
        created = int(self.runtime.service.clock().timestamp())
        msg = {"attachments": [], "avatar_url": "https://i.groupme.com/x", "created_at": created, "group_id": group,
               "id": str(msg_id or next(_ids)), "name": "Display Name", "sender_id": user, "sender_type": sender_type,
               "source_guid": "GUID", "system": system, "text": text, "user_id": user}
        if store:
            self.gm.messages.append(msg)
        return msg

    async def callback(self, msg, secret=SECRET, raw: bytes | None = None) -> int:
        async with aiohttp.ClientSession() as http:
            kwargs = {"data": raw, "headers": {"Content-Type": "application/json"}} if raw is not None else {"json": msg}
            async with http.post(f"{self.base}/api/groupme/{secret}", **kwargs) as resp:
                return resp.status

    async def settle(self) -> None:
        await self.runtime.runner.wait_idle(30)

    def link(self) -> str:
        (dm,) = self.gm.dms
        return re.search(r"(http://\S+/claim/[A-Za-z0-9_-]+)", dm["text"]).group(1)


@pytest.fixture
async def make_harness(make_runtime):
    made = []

    async def build(*, token: str = "service-token", oauth: str = "", config: dict | None = None, **env) -> Harness:
        gm = await FakeGroupMe().start()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        channel = GroupMeChannel(GroupMeConfig(**{
            "bot_id": "bot-1", "group_ids": (GROUP,), "callback_secret": SECRET, "access_token": token, "oauth_client_id": oauth,
            "api_url": gm.base_url, "oauth_url": f"{gm.base_url}/fake-oauth", "public_url": base, "post_spacing": 0.01,
            "verify_retry_delay": 0.01, **(config or {}),
        }))
        users = env.pop("users", f"groupme:{ALICE},groupme:{BOB}")
        runtime = make_runtime(users=users, admins=f"groupme:{ROOT}", VPN_DRYRUN_STEP_SECONDS=0, channels=[channel], **env)
        server = TestServer(build_http_app(runtime), host="127.0.0.1", port=port)
        await server.start_server()
        await runtime.opened()
        made.append((gm, server))
        return Harness(gm, server, channel, base, runtime)

    yield build
    for gm, server in made:
        await server.close()
        await gm.stop()


async def test_callback_security(make_harness):
    h = await make_harness()
    assert await h.callback(h.message("/vpn start"), secret="wrong-secret-0123456789") == 404
    assert await h.callback(None, raw=b"{not json") == 400
    assert await h.callback(None, raw=b"[1, 2]") == 400
    assert await h.callback(None, raw=b"{" + b" " * 70_000 + b"}") == 413
    assert await h.callback(h.message("/vpn start", group="999999")) == 200
    assert await h.callback(h.message("/vpn start", sender_type="bot")) == 200
    assert await h.callback(h.message("/vpn start", system=True)) == 200
    assert await h.callback(h.message("/vpn start", user="12ab")) == 400
    assert await h.callback(h.message("/vpn start", user="١٢٣")) == 400  # Unicode digits are not ids
    assert await h.callback(None, raw=b"[" * 5000) == 400  # RecursionError in the parser, not a 500
    assert await h.callback(None, raw=b'{"text": "\xff\xfe"}') == 400  # not UTF-8
    surrogate = b'{"group_id": "4242", "id": "77", "sender_type": "user", "system": false, "user_id": "111", "text": "/vpn \\ud800"}'
    assert await h.callback(None, raw=surrogate) == 400
    await h.settle()
    assert h.gm.posts == [] and h.gm.dms == []
    assert await h.runtime.store.sessions(list(SessionState)) == []


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


async def test_forged_sender_is_caught_by_refetch(make_harness):
    h = await make_harness()
    real = h.message("/vpn start", user=BOB)
    forged = dict(real, user_id=ALICE, sender_id=ALICE)  # someone replays Bob's message as Alice
    assert await h.callback(forged) == 200
    unknown = h.message("/vpn start", store=False)  # never posted in the group at all
    assert await h.callback(unknown) == 200
    await h.settle()
    assert await h.runtime.store.sessions(list(SessionState)) == []
    # The forgery is dropped quietly; the unknown id is answered with the truth, nothing more.
    assert h.gm.post_texts() == ["I could not confirm that message with GroupMe, so I did nothing. Please send it again in a minute."]


async def test_replayed_message_id_starts_one_session(make_harness):
    h = await make_harness()
    msg = h.message("/vpn start")
    for _ in range(3):
        assert await h.callback(msg) == 200
        await h.settle()
    assert len(await h.runtime.store.sessions(list(SessionState))) == 1
    assert len(h.gm.dms) == 1


async def test_flood_is_rate_limited(make_harness):
    h = await make_harness()
    for _ in range(20):
        await h.callback(h.message("/vpn help"))
    await h.settle()
    helps = [t for t in h.gm.post_texts() if "I hand out WireGuard" in t]
    assert len(helps) == h.channel.config.per_user_per_minute
    told = [t for t in h.gm.post_texts() if "more than 6 commands in a minute" in t]
    assert len(told) == 1, "a sender over the limit is told once, then not again"


async def test_group_limit_is_a_setting_and_told_once(make_harness):
    h = await make_harness(config={"per_group_per_minute": 3, "per_user_per_minute": 100})
    for user in (ALICE, BOB, ROOT, ALICE, BOB):
        assert await h.callback(h.message("/vpn help", user=user)) == 200
    await h.settle()
    assert len([t for t in h.gm.post_texts() if "I hand out WireGuard" in t]) == 3
    assert len([t for t in h.gm.post_texts() if "This group sent more than 3 commands" in t]) == 1


async def test_status_list_stop_answer_in_the_group_without_secrets(make_harness):
    h = await make_harness()
    await h.callback(h.message("/vpn start"))
    await h.settle()
    await h.callback(h.message("/vpn list", user=ROOT))
    await h.callback(h.message("/vpn status"))
    await h.callback(h.message("/vpn stop"))
    await h.settle()
    text = "\n".join(h.gm.post_texts())
    assert "Live VPN sessions" in text and "Your VPN session" in text and "has ended (stopped by you)" in text
    assert "PrivateKey" not in text and "/claim/" not in text


async def test_without_a_service_account_nothing_about_anyone_is_answered(make_harness):
    """Callbacks are unsigned: with no token to confirm the sender, only /vpn help is answered, and
    a forged `/vpn start key=…` cannot get anyone a session in someone else's name."""
    from provisioner.wireguard import generate_keypair

    h = await make_harness(token="")
    mine = generate_keypair()
    for text in ("/vpn start", f"/vpn start key={mine.public}", "/vpn status", "/vpn stop"):
        await h.callback(h.message(text))
    await h.settle()
    assert await h.runtime.store.sessions(list(SessionState)) == []
    texts = h.gm.post_texts()
    assert len(texts) == 4 and all("I cannot confirm with GroupMe who sent that" in t for t in texts)
    await h.callback(h.message("/vpn help"))
    await h.settle()
    assert "I hand out WireGuard" in h.gm.post_texts()[-1]


async def test_own_key_posts_peer_settings_only(make_harness):
    from provisioner.wireguard import generate_keypair

    h = await make_harness()
    mine = generate_keypair()
    await h.callback(h.message(f"/vpn start key={mine.public}"))
    await h.settle()
    text = "\n".join(h.gm.post_texts())
    assert "Peer settings for your own key" in text and mine.private.reveal() not in text
    assert not any(line.startswith(("PrivateKey", "PresharedKey")) for line in text.splitlines())
    await h.callback(h.message("/vpn start key=not-a-key", user=BOB))
    await h.settle()
    assert "not a WireGuard public key" in "\n".join(h.gm.post_texts())
    assert h.gm.dms == []


async def test_long_replies_are_split_in_order_and_throttling_is_retried(make_harness):
    h = await make_harness()
    text = "\n".join(f"{i:04d} " + "x" * 95 for i in range(30))
    h.gm.post_faults = [429, 420]
    await h.channel.send_text(None, text)
    assert "\n".join(h.gm.post_texts()) == text
    assert all(len(t) <= 1000 for t in h.gm.post_texts()) and len(h.gm.posts) == 4
    assert h.gm.requests.count(("POST", "bots/post")) == 6


def test_split_text():
    assert split_text("") == [""]
    assert split_text("a" * 2001) == ["a" * 1000, "a" * 1000, "a"]
    assert "\n".join(split_text("x\n" * 900)) == "x\n" * 900



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


# ----- verification: only documented GroupMe behaviour (issue 9, items 10 and 11) -----------------


async def test_verification_pages_back_with_before_id_in_a_busy_group(make_harness):
    """The command is 250 messages deep: found through the newest page and `before_id`, never
    through an id GroupMe was not asked about (the fake answers those 304)."""
    h = await make_harness()
    msg = h.message("/vpn status")
    for i in range(250):
        h.message(f"chatter {i}", user=BOB)
    assert await h.callback(msg) == 200
    await h.settle()
    assert "You have no VPN session running" in "\n".join(h.gm.post_texts())
    assert h.gm.requests.count(("GET", "groups/messages")) == 3


async def test_304_is_no_messages_and_the_sender_is_told(make_harness):
    h = await make_harness()
    assert await h.callback(h.message("/vpn status", store=False)) == 200  # GroupMe answers 304: nothing there
    await h.settle()
    (text,) = h.gm.post_texts()
    assert "could not confirm that message with GroupMe" in text


async def test_groupme_errors_during_verification_are_told_not_swallowed(make_harness):
    h = await make_harness()
    h.gm.message_faults = [401]
    await h.callback(h.message("/vpn start"))
    await h.settle()
    assert await h.runtime.store.sessions(list(SessionState)) == []
    assert any("could not confirm that message with GroupMe" in t for t in h.gm.post_texts())


async def test_messages_older_than_the_window_are_not_confirmed(make_harness, clock):
    h = await make_harness(config={"verify_window": 60})
    old = h.message("/vpn status")
    clock.advance(minutes=5)
    for i in range(120):
        h.message(f"chatter {i}", user=BOB)
    await h.callback(old)
    await h.settle()
    assert "could not confirm" in "\n".join(h.gm.post_texts())
    assert h.gm.requests.count(("GET", "groups/messages")) == 4  # two pages, then once more after the retry delay


async def test_forged_status_reveals_nothing(make_harness):
    h = await make_harness()
    await h.callback(h.message("/vpn start", user=BOB))
    await h.settle()
    (s,) = await h.runtime.store.sessions([SessionState.READY])
    before = len(h.gm.posts)
    for text in ("/vpn status", "/vpn list", "/vpn extend 10", "/vpn stop"):
        real = h.message("/vpn help", user=ALICE)  # Alice's real message, replayed with Bob as sender and another text
        assert await h.callback(dict(real, user_id=BOB, sender_id=BOB, text=text)) == 200
        assert await h.callback(h.message(text, user=BOB, store=False)) == 200  # never posted at all
    await h.settle()
    after = "\n".join(h.gm.post_texts()[before:])
    assert s.id not in after and (s.endpoint or "endpoint") not in after and "Your VPN session" not in after
    assert (await h.runtime.store.get(s.id)).state is SessionState.READY


@pytest.mark.parametrize("attachments", [5, True, "x", {"type": "mentions"}, [5, None, {"type": "mentions", "loci": "x"}]])
async def test_attachments_of_any_shape_are_not_a_500(make_harness, attachments):
    h = await make_harness()
    assert await h.callback(dict(h.message("/vpn help"), attachments=attachments)) == 200
    await h.settle()
    assert h.gm.posts == [] or "I hand out WireGuard" in h.gm.post_texts()[-1]


async def test_each_group_replies_through_its_own_bot(make_harness):
    other = "5555"
    h = await make_harness(config={"group_ids": (GROUP, other), "bots": ((other, "bot-5555"),)})
    await h.callback(h.message("/vpn help"))
    await h.callback(h.message("/vpn help", group=other))
    await h.callback(h.message("/vpn start", group=other))
    await h.settle()
    by_bot = {}
    for post in h.gm.posts:
        by_bot.setdefault(post["bot_id"], []).append(post["text"])
    assert len(by_bot["bot-1"]) == 1 and "I hand out WireGuard" in by_bot["bot-1"][0]
    assert any("starting VPN session" in t for t in by_bot["bot-5555"])
    assert any("ends at" in t for t in by_bot["bot-5555"])  # later, proactive replies too


def test_groupme_bot_id_accepts_group_bot_pairs():
    from bot.settings import Settings, SettingsError

    base = {"GROUPME_CALLBACK_SECRET": SECRET}
    s = Settings.from_env({**base, "GROUPME_BOT_ID": "bot-1", "GROUPME_GROUP_ID": "4242"})
    assert (s.groupme.bot_id, s.groupme.bots, s.groupme.group_ids) == ("bot-1", (), ("4242",))
    s = Settings.from_env({**base, "GROUPME_BOT_ID": "4242:abc, 5555:def"})
    assert (s.groupme.bot_id, s.groupme.bots, s.groupme.group_ids) == ("", (("4242", "abc"), ("5555", "def")), ("4242", "5555"))
    s = Settings.from_env({**base, "GROUPME_BOT_ID": "4242:abc,plain", "GROUPME_GROUP_ID": "7"})
    assert s.groupme.bot_id == "plain" and s.groupme.group_ids == ("7", "4242")
    s = Settings.from_env({**base, "GROUPME_BOT_ID": "b", "GROUPME_GROUP_ID": "7", "GROUPME_USER_PER_MINUTE": "2", "GROUPME_GROUP_PER_MINUTE": "9"})
    assert (s.groupme.per_user_per_minute, s.groupme.per_group_per_minute) == (2, 9)
    for bad, group in (("4242:a,4242:b", ""), ("a,b", "7"), ("x:a", "7"), ("4242:a", "7"), ("4242:sec ret", "")):
        with pytest.raises(SettingsError) as err:
            Settings.from_env({**base, "GROUPME_BOT_ID": bad, "GROUPME_GROUP_ID": group})
        assert "sec ret" not in str(err.value)
