"""QR codes of a client config, for the WireGuard mobile apps' "scan from QR code".

CPU-bound (tens of milliseconds): callers on the event loop run these in a thread.
"""
from __future__ import annotations

import io

import qrcode
from qrcode.constants import ERROR_CORRECT_M

# 8 px modules with the standard 4-module quiet zone: a ~300-char config gives a ~450 px image that
# phones read from a laptop screen at arm's length; medium error correction tolerates glare.
BOX_SIZE = 8
BORDER = 4


def _qr(text: str) -> qrcode.QRCode:
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=BOX_SIZE, border=BORDER)
    qr.add_data(text.encode("utf-8"))
    qr.make(fit=True)
    return qr


def qr_png(text: str) -> bytes:
    buf = io.BytesIO()
    _qr(text).make_image(fill_color="black", back_color="white").save(buf, format="PNG")
    return buf.getvalue()


def qr_terminal(text: str) -> str:
    """Half-block rendering, dark on light as phones expect, two modules per character row."""
    out = io.StringIO()
    _qr(text).print_ascii(out=out, invert=True)
    return out.getvalue()
