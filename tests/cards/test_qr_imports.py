"""A cold start answers its first message without the QR libraries (issue 20.11).

zxing-cpp, Pillow and qrcode cost ~20 ms of CPU to import, and only a delivered config (or the
console's terminal QR) needs them: cards/qr.py loads them on first use. Checked in a fresh
interpreter, which loads everything `serve` loads before it listens (the wiring, every channel, the
Table Storage store), and then renders a QR, which loads them.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QR_LIBRARIES = ("qrcode", "zxingcpp", "PIL")

PROBE = f"""
import sys
import app, bot.wiring, bot.store.tables, bot.store.sqlite
import bot.channels.teams.channel, bot.channels.groupme.channel, bot.channels.web.channel
loaded = [m for m in {QR_LIBRARIES!r} if m in sys.modules]
print("at start-up:", ",".join(loaded))
from cards.qr import qr_png
assert qr_png("[Interface]").startswith(b"\\x89PNG")
print("after a QR:", ",".join(m for m in {QR_LIBRARIES!r} if m in sys.modules))
"""


def test_serve_start_up_loads_no_qr_library_and_a_qr_still_renders():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "at start-up: \n" in out.stdout, out.stdout
    assert "after a QR: zxingcpp,PIL" in out.stdout, out.stdout
