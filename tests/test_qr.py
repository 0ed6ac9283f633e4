"""The QR code scans, with a real decoder, to exactly the config the user gets."""
import io

from PIL import Image

from cards.qr import qr_png, qr_terminal
from tests.qrtools import decode_qr as decode
from provisioner.wireguard import ClientConfig, generate_keypair, generate_preshared_key, render_client_config


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


def test_terminal_rendering_is_half_blocks():
    text = qr_terminal(a_config())
    lines = text.splitlines()
    assert len(lines) > 20 and set("".join(lines)) <= set("█▀▄ \xa0")
