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
# One fixed mask instead of trying all eight: the library's penalty scoring of every mask is pure
# Python and was ~80 % of a QR's cost (the bulk of creating a session). Every mask is valid and
# readers decode any of them; scoring only avoids the rare symbol that is harder to read.
MASK = 2


def _qr(text: str) -> qrcode.QRCode:
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=BOX_SIZE, border=BORDER, mask_pattern=MASK)
    qr.add_data(text.encode("utf-8"))
    qr.make(fit=True)
    return qr


def qr_png(text: str) -> bytes:
    """The same PNG the library's image factory draws (a 1-bit image, modules scaled up), without
    drawing module by module."""
    matrix = _qr(text).get_matrix()  # quiet zone included
    size = len(matrix)
    image = Image.new("1", (size, size), 1)
    image.putdata([0 if dark else 1 for row in matrix for dark in row])
    buf = io.BytesIO()
    image.resize((size * BOX_SIZE, size * BOX_SIZE), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def qr_terminal(text: str) -> str:
    """Half-block rendering, dark on light as phones expect, two modules per character row."""
    out = io.StringIO()
    _qr(text).print_ascii(out=out, invert=True)
    return out.getvalue()
