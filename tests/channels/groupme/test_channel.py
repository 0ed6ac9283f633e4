"""The GroupMe channel: the callback (who is heard, what is dropped) and replies in the group."""
from __future__ import annotations

import pytest

from bot.channels.groupme.api import split_text
from bot.store.model import SessionState
from tests.channels.groupme.harness import BOB, GROUP, ROOT, SECRET


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


async def test_replayed_message_id_starts_one_session(make_harness):
    h = await make_harness()
    msg = h.message("/vpn start")
    for _ in range(3):
        assert await h.callback(msg) == 200
        await h.settle()
    assert len(await h.runtime.store.sessions(list(SessionState))) == 1
    assert len(h.gm.dms) == 1


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
