"""Decode QR codes with a real decoder (zxing-cpp), as a phone would."""
import io

import zxingcpp
from PIL import Image


def decode_qr(png: bytes, *, try_invert: bool = True) -> str:
    """`try_invert=False` reads as strict scanners do: light-on-dark codes do not count."""
    # Only QR codes, as the WireGuard apps scan only those (a 1-D reader can "see" noise in the modules).
    results = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode, try_invert=try_invert)
    assert len(results) == 1, "exactly one QR code expected"
    return results[0].text


# A terminal, drawn: every character cell 8×18 px, glyphs painted in the foreground colour.
DARK_THEME = ((204, 204, 204), (30, 30, 30))  # (foreground, background)
LIGHT_THEME = ((40, 40, 40), (250, 250, 250))
_SGR_COLOURS = {"30": ("fg", (0, 0, 0)), "107": ("bg", (255, 255, 255)), "47": ("bg", (229, 229, 229))}


def _cell_mask(ch: str) -> list[list[bool]]:
    """A glyph as a 2-column × 6-row mask (enough for half blocks, half columns and sextants)."""
    full = [[True, True]] * 6
    if ch == " ":
        return [[False, False]] * 6
    if ch == "█":
        return full
    simple = {"▀": [[True, True]] * 3 + [[False, False]] * 3, "▄": [[False, False]] * 3 + [[True, True]] * 3,
              "▌": [[True, False]] * 6, "▐": [[False, True]] * 6}
    if ch in simple:
        return simple[ch]
    index = ord(ch) - 0x1FB00
    assert 0 <= index < 60, f"unexpected character {ch!r} in a terminal QR"
    value = index + 1
    value += value >= 21
    value += value >= 42
    return [[bool(value >> (2 * (r // 2) + c) & 1) for c in range(2)] for r in range(6)]


def render_terminal(text: str, theme: tuple, cell: tuple[int, int] = (8, 18), margin: int = 3) -> bytes:
    """PNG of `text` as a terminal with `theme` shows it, honouring the SGR colours the QR uses."""
    import re

    fg_default, bg_default = theme
    lines = text.splitlines()
    width = max(len(re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in lines)
    cw, chh = cell
    img = Image.new("RGB", ((width + 2 * margin) * cw, (len(lines) + 2 * margin) * chh), bg_default)
    px = img.load()
    for row, line in enumerate(lines):
        fg, bg, col = fg_default, bg_default, 0
        for token in re.findall(r"\x1b\[[0-9;]*m|.", line):
            if token.startswith("\x1b["):
                for code in token[2:-1].split(";"):
                    if code in ("0", ""):
                        fg, bg = fg_default, bg_default
                    elif code in _SGR_COLOURS:
                        which, colour = _SGR_COLOURS[code]
                        fg, bg = (colour, bg) if which == "fg" else (fg, colour)
                continue
            mask = _cell_mask(token)
            x0, y0 = (col + margin) * cw, (row + margin) * chh
            for y in range(chh):
                for x in range(cw):
                    px[x0 + x, y0 + y] = fg if mask[y * 6 // chh][x * 2 // cw] else bg
            col += 1
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
