"""The QR code scans, with a real decoder, to exactly the config the user gets."""
import io

import pytest
from PIL import Image

from cards.qr import qr_png, qr_terminal
from provisioner.wireguard import ClientConfig, generate_keypair, generate_preshared_key, render_client_config
from tests.support.qrtools import DARK_THEME, LIGHT_THEME, render_terminal
from tests.support.qrtools import decode_qr as decode


def a_config(**kw) -> str:
    kp, server = generate_keypair(), generate_keypair()
    fields = dict(
        private_key=kp.private,
        address="10.77.0.2/32",
        server_public_key=server.public,
        preshared_key=generate_preshared_key(),
        endpoint="vpn-gateway.example.org:51820",
        dns=("1.1.1.1", "2606:4700:4700::1111"),
    )
    fields.update(kw)
    return render_client_config(ClientConfig(**fields))


def test_qr_decodes_to_exactly_the_config():
    config = a_config()
    assert decode(qr_png(config)) == config


def test_qr_png_is_large_enough_to_scan_and_small_enough_to_send():
    png = qr_png(a_config())
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width == img.height
    assert 300 <= img.width <= 1024  # Teams card images max 1024 px
    assert len(png) < 50_000


def test_long_split_tunnel_config_still_scans():
    config = a_config(allowed_ips=tuple(f"10.{i}.0.0/16" for i in range(40)))
    assert decode(qr_png(config)) == config


@pytest.mark.parametrize("theme, terminal, scans", [
    ("ansi", DARK_THEME, True), ("ansi", LIGHT_THEME, True),  # sets its own black on white
    ("dark", DARK_THEME, True), ("dark", LIGHT_THEME, False),  # draws the light modules
    ("light", LIGHT_THEME, True), ("light", DARK_THEME, False),  # draws the dark modules
])
@pytest.mark.parametrize("max_rows", [None, 22])
def test_terminal_qr_as_a_terminal_shows_it_decodes_to_the_config(theme, terminal, scans, max_rows):
    config = a_config()
    picture = render_terminal(qr_terminal(config, theme=theme, max_rows=max_rows), terminal)
    if scans:
        assert decode(picture, try_invert=False) == config
    else:  # the wrong theme shows a negative, which strict scanners refuse: the option matters
        with pytest.raises(AssertionError):
            decode(picture, try_invert=False)


def test_terminal_qr_fits_an_80x24_terminal_when_asked():
    for config in (a_config(), a_config(dns=())):
        roomy = qr_terminal(config, max_rows=None).splitlines()
        compact = qr_terminal(config, max_rows=22).splitlines()
        assert set("".join(roomy)) <= set("█▀▄ ")  # half blocks: two square modules per character
        assert len(compact) <= 23 and max(map(len, compact)) <= 40  # sextants: 2 × 3 modules per character
        assert len(roomy) <= 35  # was 40 rows at medium error correction with a 4-module border


def test_terminal_qr_stays_in_half_blocks_when_it_fits():
    short = "[Interface]\nAddress = 10.77.0.2/32\n"
    assert qr_terminal(short, max_rows=22) == qr_terminal(short)
    with pytest.raises(ValueError):
        qr_terminal(short, theme="blue")
