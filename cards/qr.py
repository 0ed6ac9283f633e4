"""QR codes of a client config, for the WireGuard mobile apps' "scan from QR code".

CPU-bound (tens of milliseconds): callers on the event loop run these in a thread.
"""
from __future__ import annotations

import io

import qrcode
from PIL import Image
from qrcode.constants import ERROR_CORRECT_M

# 8 px modules with the standard 4-module quiet zone: a ~300-char config gives a ~450 px image that
# phones read from a laptop screen at arm's length; medium error correction tolerates glare.
BOX_SIZE = 8
BORDER = 4
# A fixed mask: choosing the "best" of 8 tries every one in pure Python (3x the time of the rest) for
# a readability gain phone scanners do not need. Measured in bench/bench_chat.py: 26 ms -> 3 ms a code.
MASK = 0


def _qr(text: str) -> qrcode.QRCode:
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=BOX_SIZE, border=BORDER, mask_pattern=MASK)
    qr.add_data(text.encode("utf-8"))
    qr.make(fit=True)
    return qr


def qr_png(text: str) -> bytes:
    """A 1-bit PNG drawn from the module matrix in one pass (the library draws module by module)."""
    matrix = _qr(text).get_matrix()  # includes the quiet zone
    n = len(matrix)
    img = Image.new("1", (n, n))
    img.putdata([0 if dark else 1 for row in matrix for dark in row])
    buf = io.BytesIO()
    img.resize((n * BOX_SIZE, n * BOX_SIZE), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def qr_terminal(text: str) -> str:
    """Half-block rendering, dark on light as phones expect, two modules per character row."""
    out = io.StringIO()
    _qr(text).print_ascii(out=out, invert=True)
    return out.getvalue()
