"""QR codes of a client config, for the WireGuard mobile apps' "scan from QR code".

CPU-bound (milliseconds): callers on the event loop run these in a thread.
"""
from __future__ import annotations

import io

# The QR libraries (zxing-cpp, Pillow, qrcode: ~20 ms of CPU) load on first use, inside the functions:
# a cold start answers its first message without them (issue 20.11).

# 8 px modules with the standard 4-module quiet zone: a ~300-char config gives a ~600 px image that
# phones read from a laptop screen at arm's length; medium error correction tolerates glare.
BOX_SIZE = 8
EC_LEVEL = "M"
# Teams renders card images up to 1,024 px a side: a long config gets smaller modules (at least 5 px
# even at QR version 40), not a bigger image.
MAX_PX = 1024


def qr_png(text: str, *, max_px: int = MAX_PX) -> bytes:
    """A 1-bit PNG. zxing-cpp encodes in C++ (~1.5 ms, with the best of the 8 masks); the qrcode
    library took ~8 ms of pure Python holding the GIL, a third of a /vpn start burst's CPU."""
    import zxingcpp
    from PIL import Image

    symbol = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode, ec_level=EC_LEVEL)
    pixels = memoryview(symbol.to_image(scale=1, add_quiet_zones=True))  # type: ignore[arg-type]  # one byte per module (the buffer protocol)
    n = (pixels.shape or (0,))[0]
    img = Image.frombuffer("L", (n, n), pixels.tobytes(), "raw", "L", 0, 1).convert("1", dither=Image.Dither.NONE)
    buf = io.BytesIO()
    box = max(1, min(BOX_SIZE, max_px // n))
    img.resize((n * box, n * box), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


# The terminal rendering: lowest error correction (a screen has no dirt or glare to repair) and a
# 2-module quiet zone drawn in light colour, so it scans whatever the terminal's background is.
TERMINAL_BORDER = 2
THEMES = ("ansi", "dark", "light")
_SGR_BLACK_ON_WHITE, _SGR_RESET = "\x1b[30;107m", "\x1b[0m"


def qr_terminal(text: str, *, theme: str = "dark", max_rows: int | None = None, sextants: bool = True) -> str:
    """The QR code as text: dark-on-light whatever the terminal theme, as few rows as fit.

    `theme` is the terminal's: "dark" (light text on dark) draws the light modules, "light" draws
    the dark ones, "ansi" sets black on white itself (right on either). Half blocks give two
    modules per row (square modules); when that exceeds `max_rows`, sextants (U+1FB00, 2×3 per
    character) give three, so a typical config fits an 80×24 terminal — where the terminal can draw
    them (`sextants`); otherwise half blocks, however tall.
    """
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {THEMES}")
    import qrcode
    from qrcode.constants import ERROR_CORRECT_L

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_L, border=TERMINAL_BORDER)
    qr.add_data(text.encode("utf-8"))
    qr.make(fit=True)
    matrix = qr.get_matrix()  # True = dark module, quiet zone included
    draw_dark = theme != "dark"
    per_row = 2 if not sextants or max_rows is None or (len(matrix) + 1) // 2 <= max_rows else 3
    glyph = _half_block if per_row == 2 else _sextant
    lines = []
    for top in range(0, len(matrix), per_row):
        rows = [matrix[top + i] if top + i < len(matrix) else [False] * len(matrix) for i in range(per_row)]
        cells = []
        for left in range(0, len(matrix), 2 if per_row == 3 else 1):
            cols = range(left, min(left + 2, len(matrix))) if per_row == 3 else (left,)
            bits = [[rows[r][c] == draw_dark for c in cols] for r in range(per_row)]
            cells.append(glyph(bits))
        line = "".join(cells)
        lines.append(f"{_SGR_BLACK_ON_WHITE}{line}{_SGR_RESET}" if theme == "ansi" else line)
    return "\n".join(lines) + "\n"


def _half_block(bits: list[list[bool]]) -> str:
    upper, lower = bits[0][0], bits[1][0]
    return "█" if upper and lower else "▀" if upper else "▄" if lower else " "


def _sextant(bits: list[list[bool]]) -> str:
    value = sum(1 << (2 * r + c) for r in range(3) for c, on in enumerate(bits[r]) if on)
    special = {0: " ", 63: "█", 21: "▌", 42: "▐"}
    if value in special:
        return special[value]
    return chr(0x1FB00 + value - 1 - (value > 21) - (value > 42))
