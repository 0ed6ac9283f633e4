"""check_activity skips its walk for lone surrogates when the body cannot hold one
(activities.may_hold_surrogates): never when json.loads of that body gives one."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.channels.teams.activities import BadActivity, _has_surrogate, check_activity, may_hold_surrogates

text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=8) | st.text(
    alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=3)
values = st.recursive(st.none() | st.booleans() | st.integers() | text,
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12)


def bodies(value) -> list[bytes]:
    out = [json.dumps(value).encode()]  # ensure_ascii: surrogates as \\udXXX escapes
    raw = json.dumps(value, ensure_ascii=False)
    out.append(raw.encode("utf-8", "surrogatepass"))  # lone surrogates as the bytes json.loads reads back with surrogatepass
    out.append(raw.encode("utf-16", "surrogatepass"))
    return out


@settings(max_examples=400, deadline=None)
@given(values)
def test_a_body_that_gives_a_lone_surrogate_is_always_walked(value):
    for body in bodies(value):
        try:
            data = json.loads(body)
        except ValueError:
            continue
        if _has_surrogate(data):
            assert may_hold_surrogates(body), body


@pytest.mark.parametrize("body", [b'{"text": "\\ud800"}', b'{"type": "message", "text": "\xed\xa0\x80"}', b'{"t": "\\\\ud800"}'])
def test_escapes_and_non_ascii_bytes_are_looked_at(body):
    assert may_hold_surrogates(body)


def test_the_channels_own_check_refuses_a_lone_surrogate_in_an_escape():
    body = b'{"type": "message", "text": "\\udc00", "from": {"id": "a"}, "recipient": {"id": "b"}, "conversation": {"id": "c"}}'
    with pytest.raises(BadActivity, match="surrogate"):
        check_activity(json.loads(body), surrogates_possible=may_hold_surrogates(body))
    assert not may_hold_surrogates(b'{"type": "message", "text": "/vpn help"}')
