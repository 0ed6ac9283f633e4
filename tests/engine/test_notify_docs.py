"""docs/usage.md's webhook verification snippet, run as written against what the bot sends: a genuine
delivery passes, a tampered body, a wrong secret, a stale or mismatched timestamp and a duplicate do not."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from bot.engine.notify import SIGNATURE, TIMESTAMP, sign

DOC = Path(__file__).resolve().parents[2] / "docs" / "usage.md"
SECRET = "s" * 32


def snippet() -> dict:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the documentation's own example
    return scope


def delivery(stamp: int, **changes) -> tuple[bytes, dict]:
    body = json.dumps({"id": "0a1b2c3d4e.ended", "type": "ended", "timestamp": stamp, **changes}, sort_keys=True).encode()
    return body, {SIGNATURE: sign(SECRET, body), TIMESTAMP: str(stamp)}


def test_the_documented_verification_accepts_what_the_bot_signs_and_nothing_else():
    verify = snippet()["verify"]
    now = int(time.time())
    body, headers = delivery(now)
    assert verify(SECRET, body, headers)["id"] == "0a1b2c3d4e.ended"
    assert verify(SECRET, body, headers) is None  # the same event again: a duplicate
    body, headers = delivery(now, id="1111111111.ended")
    assert verify("another-secret-entirely-xxxxxxxx", body, headers) is None
    assert verify(SECRET, body.replace(b"ended", b"ready", 1), headers) is None  # tampered
    assert verify(SECRET, body, {**headers, TIMESTAMP: str(now + 1)}) is None  # a header that is not the signed one
    old, old_headers = delivery(now - 3600, id="2222222222.ended")
    assert verify(SECRET, old, old_headers) is None  # a replay an hour later
    assert verify(SECRET, body, headers)["id"] == "1111111111.ended"
