"""Keys from outside input (issue 18.6): bounded and injective on both stores.

Table Storage limits a PartitionKey/RowKey (1 KiB on Azure, 512 characters on Azurite) and forbids
some characters, which the stores escape (up to 6 characters each): before, the inputs below were a
500 or dropped work on Table Storage, and message ids were de-duplicated on their first 256
characters only. SQLite and Table Storage file them under the same `store_key`.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bot.store.codec import KEY_BYTES, store_key
from bot.store.model import SessionState
from bot.store.ports import CreateOutcome, LocalUser
from tests.support.factories import new_session

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=15)

LONG_EMAILS = [
    "/" * 200 + "@example.org",  # escapes to 600 characters
    "\u0080" * 100 + "@example.org",  # a C1 control: 6 characters each escaped
    "\U0001F600" * 242 + "@example.org",  # 254 characters, 996 UTF-8 bytes, 496 UTF-16 units
    "/" * 170 + "@example.org",  # `users add` crashed with this one
    "a" * 242 + "@example.org",  # plain, at the 254-character limit
]
LONG_IDENTITIES = ["test:" + "/" * 256, "test:" + "\U0001F600" * 256, "test:" + "#?\\" * 100]


def test_store_key_is_bounded_injective_and_never_truncates():
    samples = [
        "", "a", "a/b", "a%2Fb", "%h" + "0" * 64, "a\x00", "a\ud800", "\ufffe", "/" * 256, "/" * 257, "x" * 255, "x" * 256,
        "\U0001F600" * 63, "\U0001F600" * 64, *LONG_EMAILS, *LONG_IDENTITIES,
        "m" * 256 + "A" * 44, "m" * 256 + "B" * 44,  # two 300-character ids sharing a 256-character prefix
    ]
    keys = [store_key(s) for s in samples]
    assert len(set(keys)) == len(samples)  # injective on these (an escaped form never starts with %h)
    for key in keys:
        assert len(key.encode()) <= KEY_BYTES
        assert not any(c in key for c in "/\\#?") and all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in key)
        key.encode()  # no lone surrogate left: both stores can encode it
    assert store_key("alice@example.org") == "alice@example.org"  # readable when it can be
    assert store_key("a/b") == "a%2Fb" and store_key("a%2Fb") == "a%252Fb"
    assert store_key("/" * 256).startswith("%h") and store_key("%h" + "0" * 64).startswith("%25h")


def _escaped_one_by_one(text: str) -> str:
    """store_key as its docstring defines it, character by character (the fast path must agree)."""
    import hashlib

    escaped = "".join(
        "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        if ch in "/\\#?%" or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF or ord(ch) in (0xFFFE, 0xFFFF)
        else ch
        for ch in text
    )
    if len(escaped.encode("utf-8")) <= KEY_BYTES:
        return escaped
    return "%h" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def test_store_key_agrees_with_its_definition_on_random_text():
    import random

    rng = random.Random(25)
    alphabet = [chr(i) for i in range(0x250)] + ["\ud800", "\udfff", "\ufffe", "\uffff", "\U0001F600", "\u6f22", "\U0010FFFF"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 5, 32, 63, 64, 65, 127, 128, 254, 255, 256, 300))))
        assert store_key(text) == _escaped_one_by_one(text), repr(text)
    safe = [c for c in alphabet if store_key(c) == c]  # long text with nothing to escape: the fast path's length rules
    for _ in range(5000):
        text = "".join(rng.choice(safe) for _ in range(rng.choice((62, 63, 64, 65, 127, 128, 254, 255, 256))))
        assert store_key(text) == _escaped_one_by_one(text), repr(text)
    for text in ("a" * 255, "a" * 256, "\u00e9" * 127, "\u00e9" * 128, "\U0001F600" * 63, "\U0001F600" * 64):
        assert store_key(text) == _escaped_one_by_one(text)


async def test_long_and_escaped_emails_are_accounts_like_any_other(store, replica):
    for i, email in enumerate(LONG_EMAILS):
        await store.put_user(LocalUser(email, f"hash-{i}", T0))
    for i, email in enumerate(LONG_EMAILS):
        got = await replica.get_user(email)
        assert got is not None and got.email == email and got.password_hash == f"hash-{i}"
    assert sorted(u.email for u in await replica.list_users()) == sorted(LONG_EMAILS)
    assert await replica.get_user("/" * 201 + "@example.org") is None
    assert await replica.delete_user(LONG_EMAILS[0]) is True and await store.get_user(LONG_EMAILS[0]) is None


async def test_long_identities_get_sessions_under_their_caps(store, replica):
    for owner in LONG_IDENTITIES:
        first = new_session(owner=owner)
        assert await store.create_session(first, per_user=1, total=100) is CreateOutcome.CREATED
        assert await replica.create_session(new_session(owner=owner), per_user=1, total=100) is CreateOutcome.USER_LIMIT
        (mine,) = await replica.sessions([SessionState.REQUESTED], owner=owner)
        assert mine.id == first.id
        s = await store.save(mine.moved(SessionState.FAILED, T0))  # an ended session frees its place
        assert s.state is SessionState.FAILED
        assert await replica.create_session(new_session(owner=owner), per_user=1, total=100) is CreateOutcome.CREATED
    assert await store.get("/" * 600) is None and await store.get("\U0001F600" * 300) is None


async def test_message_ids_are_whole_and_may_be_long(store, replica):
    long_slashes = "/" * 256
    assert await store.first_seen("teams", long_slashes, T0) is True
    assert await replica.first_seen("teams", long_slashes, T0) is False  # a re-send, recognised
    a, b = "m" * 256 + "A" * 44, "m" * 256 + "B" * 44
    assert await store.first_seen("teams", a, T0) is True
    assert await replica.first_seen("teams", b, T0) is True  # a different message: not a re-send of `a`
    assert await store.first_seen("teams", b, T0) is False
    assert await store.first_seen("teams", "\udc80" * 10, T0) is True  # even a lone surrogate is an id


async def test_long_counter_keys_and_progress_keys(store, replica):
    key = "login-pair:" + "/" * 300 + "|" + "\u0080" * 100
    assert await store.take_attempt(key, T0, WINDOW, 2) is True
    assert await replica.take_attempt(key, T0, WINDOW, 2) is True
    assert await store.take_attempt(key, T0, WINDOW, 2) is False
    assert await replica.attempts(key, T0, WINDOW) == 2
    assert await store.attempts(key[:-1], T0, WINDOW) == 0
    await store.remember_sign_in(LONG_EMAILS[0], "\U0001F600" * 200, T0)
    assert await replica.sign_in_addresses(LONG_EMAILS[0], T0) == {"\U0001F600" * 200}
    assert await replica.sign_in_addresses(LONG_EMAILS[1], T0) == frozenset()
    await store.set_progress("web:" + "/" * 400, "working", T0)
    assert await replica.get_progress("web:" + "/" * 400) == "working"


@pytest.mark.parametrize("text", ["/" * 200 + "@example.org", "\u0080" * 100 + "@example.org", "\U0001F600" * 242 + "@example.org"])
def test_examples_from_the_issue_are_hashed_not_escaped_past_the_limit(text):
    assert store_key(text).startswith("%h") and len(store_key(text)) == 66
