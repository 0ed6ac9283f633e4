"""Group chatter (issue 20, item 10): every group message reaches the callback; only commands may
cost more than a glance. Chatter is answered before the store, the task runner, GroupMe's API or
(for plain ASCII) the JSON reader is touched, and the filter never drops what the parser would
answer."""
from __future__ import annotations

import json
from unittest import mock

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.channels.deps import ChatDeps
from bot.channels.groupme import chatter
from bot.channels.groupme.channel import GroupMeChannel
from bot.channels.groupme.chatter import addressed, cannot_be_a_command, strip_mentions, worth_waking
from bot.channels.groupme.config import GroupMeConfig
from bot.chat import parser
from bot.chat.parser import Command, Usage, parse
from tests.channels.groupme.harness import ALICE, BOB, GROUP, SECRET

LONG = "I went through the notes from yesterday and " * 15  # > 500 characters: "too long to be a command"
CHATTER = [
    "lol",
    "Are we still meeting at the usual place tomorrow? I can bring the slides.",
    "the vpn was slow yesterday, was it just me?",  # mentions vpn, not addressed
    "see https://example.com/start/help for the agenda",  # slashes and verbs inside a URL
    "our family 👨\u200d👩\u200d👧 says hi",  # U+200D (a format character) inside an emoji
    "🏳️\u200d🌈 parade on Saturday",
    LONG,
    "Ｈｅｌｌｏ ｆｒｏｍ ｆｕｌｌ－ｗｉｄｔｈ",
    "",
]


def _body(text: str | None, *, sender_type: str = "user", attachments: list | None = None, ensure_ascii: bool = False, msg_id: str = "500") -> bytes:
    msg = {"attachments": attachments or [], "avatar_url": "https://i.groupme.com/1024x1024.jpeg.0123abcd", "created_at": 1302623328,
           "group_id": GROUP, "id": msg_id, "name": "Alice", "sender_id": ALICE, "sender_type": sender_type, "source_guid": "GUID",
           "system": False, "text": text, "user_id": ALICE}
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=ensure_ascii).encode()


# ----- through the app: chatter costs GroupMe nothing and is never answered --------------------------


async def test_chatter_is_never_verified_nor_answered(make_harness):
    """Before the filter, the long message and the two emoji joined with U+200D were "commands"
    with a usage problem: re-fetched from GroupMe, then answered in the group."""
    h = await make_harness()
    for text in CHATTER:
        assert await h.callback(h.message(text, user=BOB)) == 200
    assert await h.callback(dict(h.message("try /vpn start, it works"), sender_type="bot")) == 200  # the bot's own post
    await h.settle()
    assert h.gm.requests == [] and h.gm.posts == []


async def test_commands_still_get_through_the_filter(make_harness):
    h = await make_harness()
    for text in ("/vpn help", "  /VPN   help ", "／ｖｐｎ help", "/help"):
        assert await h.callback(h.message(text)) == 200
    mentioned = h.message("@VPN Bot /vpn help")
    mentioned["attachments"] = [{"type": "mentions", "user_ids": ["9"], "loci": [[0, 8]]}]  # as GroupMe stores it, too
    assert await h.callback(mentioned) == 200
    await h.settle()
    texts = h.gm.post_texts()
    assert len([t for t in texts if "I hand out WireGuard" in t]) == 5
    assert any("commands start with /vpn" in t for t in texts)


# ----- the channel alone: chatter touches nothing it was handed ------------------------------------


class _Tripwire:
    """Any use of a dependency is recorded: chatter must not reach the store, the runner or GroupMe."""

    def __init__(self, name: str, touched: list[str]) -> None:
        self._name, self._touched = name, touched

    def __getattr__(self, attr: str):
        self._touched.append(f"{self._name}.{attr}")
        raise AssertionError(f"chatter touched {self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        self._touched.append(self._name)
        raise AssertionError(f"chatter called {self._name}")


def _request(body: bytes):
    protocol = mock.Mock(_reading_paused=False)
    payload = streams.StreamReader(protocol, 2**16, loop=mock.Mock())
    payload.feed_data(body)
    payload.feed_eof()
    return make_mocked_request("POST", f"/api/groupme/{SECRET}", headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
                               match_info={"secret": SECRET}, payload=payload)


async def test_chatter_touches_no_dependency():
    touched: list[str] = []
    t = lambda name: _Tripwire(name, touched)  # noqa: E731
    channel = GroupMeChannel(GroupMeConfig(bot_id="b", group_ids=(GROUP,), callback_secret=SECRET, access_token="tok", public_url="http://127.0.0.1:1"))
    await channel.attach(ChatDeps(http=t("http"), clock=t("clock"), runner=t("runner"), handle=t("handle"), notify=t("notify"),
                                  welcome=t("welcome"), configs=t("configs"), sessions=t("sessions")))
    bodies = [_body(text, ensure_ascii=ascii_) for text in CHATTER for ascii_ in (False, True)]
    bodies += [_body("/vpn start", sender_type="bot"), _body("/vpn start", sender_type="system")]
    for body in bodies:
        assert (await channel._callback(_request(body))).status == 200
    assert touched == []
    with pytest.raises(AssertionError):  # the tripwires do fire: a command reaches the task runner
        await channel._callback(_request(_body("/vpn start")))
    assert touched == ["runner.start"]


def test_plain_ascii_chatter_is_decided_from_the_bytes():
    plain = [t for t in CHATTER if t.isascii() and "vpn" not in t.lower() and "/start" not in t]
    assert plain and all(cannot_be_a_command(_body(t)) for t in plain)
    assert not cannot_be_a_command(_body("the vpn was slow"))  # left to the second look, which drops it
    assert not cannot_be_a_command(b"{not json") and not cannot_be_a_command(b"[1, 2]")  # malformed: still a 400
    assert not cannot_be_a_command(_body("/vpn help", ensure_ascii=True).replace(b"/vpn", b"\\/vpn"))


def test_worth_waking_for_a_front():
    groups = {GROUP}
    assert worth_waking(_body("/vpn start"), groups) and worth_waking(_body("／ｖｐｎ start", ensure_ascii=True), groups)
    assert not any(worth_waking(_body(t), groups) for t in CHATTER)
    assert not worth_waking(_body("/vpn start", sender_type="bot"), groups)
    assert not worth_waking(_body("/vpn start"), {"999"})
    assert not worth_waking(b"{not json", groups) and not worth_waking(b"[" * 5000, groups)


# ----- the filter never drops what the parser would answer -----------------------------------------


def test_the_verbs_are_the_parsers():
    assert chatter.VERBS == parser.VERBS


_command_like = st.builds(
    lambda pre, head, rest: pre + head + rest,
    st.sampled_from(["", " ", "\u3000", "&nbsp;", "\n"]),
    st.sampled_from(["/vpn", "vpn", "/VPN", "Vpn", "//vpn", "／ｖｐｎ", "𝐯𝐩𝐧", "/start", "/Help", "/stop", "/list", "/extend", "/status", "/ls", "start", "/"]),
    st.text(max_size=30) | st.sampled_from(["", " start", " help", " extend 30", "\u200d", " " + "x" * 600]),
)
_texts = st.text(max_size=80) | _command_like


@settings(max_examples=400, deadline=None)
@given(_texts)
def test_addressed_is_the_parsers_test(text):
    parsed = parse(text)
    if isinstance(parsed, Command) or (isinstance(parsed, Usage) and parsed.problem.startswith("commands start with /vpn")):
        assert addressed(text), (text, parsed)
    if addressed(text):
        assert parsed is not None, text


@settings(max_examples=400, deadline=None)
@given(_texts, st.booleans(), st.lists(st.tuples(st.integers(0, 40), st.integers(0, 10)), max_size=2))
def test_the_bytes_never_drop_an_addressed_message(text, ensure_ascii, loci):
    attachments = [{"type": "mentions", "user_ids": ["1"] * len(loci), "loci": [list(x) for x in loci]}] if loci else []
    body = _body(text, ensure_ascii=ensure_ascii, attachments=attachments)
    if cannot_be_a_command(body):
        assert not addressed(strip_mentions(text, attachments)), (text, loci)
