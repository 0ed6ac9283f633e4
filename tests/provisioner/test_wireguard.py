"""WireGuard keys and configs: compatible with wireguard-tools, and secrets never shown by accident."""
import base64
import ipaddress
import shutil
import subprocess

import pytest

from provisioner.wireguard import (
    ClientConfig,
    Secret,
    ServerConfig,
    ServerPeer,
    free_address,
    generate_keypair,
    generate_preshared_key,
    is_valid_key,
    parse_allowed_ips,
    public_key_of,
    render_client_config,
    render_server_config,
)


def test_keypair_is_x25519_in_wg_format():
    kp = generate_keypair()
    assert is_valid_key(kp.private.reveal()) and is_valid_key(kp.public)
    assert public_key_of(kp.private) == kp.public
    assert kp.private.reveal() != kp.public


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools not installed")
def test_public_key_matches_wg_pubkey():
    kp = generate_keypair()
    out = subprocess.run(["wg", "pubkey"], input=kp.private.reveal().encode(), capture_output=True, check=True)
    assert out.stdout.decode().strip() == kp.public


def test_secret_never_shows_itself():
    kp = generate_keypair()
    psk = generate_preshared_key()
    for text in (repr(kp), str(kp), f"{kp.private}", f"{psk}", repr(psk), "%s" % (kp.private,)):
        assert kp.private.reveal() not in text
        assert psk.reveal() not in text
    assert len(base64.b64decode(psk.reveal())) == 32


def test_client_config_renders_as_the_apps_import_it():
    cfg = ClientConfig(
        private_key=Secret("cPriv" + "A" * 38 + "="),
        address="10.77.0.2/32",
        server_public_key="sPub" + "B" * 39 + "=",
        preshared_key=Secret("psk" + "C" * 40 + "="),
        endpoint="192.0.2.1:51820",
        dns=("1.1.1.1", "9.9.9.9"),
    )
    assert render_client_config(cfg) == (
        "[Interface]\n"
        f"PrivateKey = cPriv{'A' * 38}=\n"
        "Address = 10.77.0.2/32\n"
        "DNS = 1.1.1.1, 9.9.9.9\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = sPub{'B' * 39}=\n"
        f"PresharedKey = psk{'C' * 40}=\n"
        "AllowedIPs = 0.0.0.0/0, ::/0\n"
        "Endpoint = 192.0.2.1:51820\n"
        "PersistentKeepalive = 25\n"
    )


def test_split_tunnel_and_no_keepalive():
    cfg = ClientConfig(Secret("k"), "10.0.0.2/32", "p", None, "h:1", allowed_ips=("10.0.0.0/8",), keepalive=0)
    text = render_client_config(cfg)
    assert "AllowedIPs = 10.0.0.0/8\n" in text
    assert "PersistentKeepalive" not in text and "PresharedKey" not in text and "DNS" not in text


def test_server_config():
    text = render_server_config(ServerConfig(Secret("k="), "10.0.0.1/24", 51820, (ServerPeer("p=", Secret("s="), ("10.0.0.2/32",)),)))
    assert text == "[Interface]\nPrivateKey = k=\nListenPort = 51820\n\n[Peer]\nPublicKey = p=\nPresharedKey = s=\nAllowedIPs = 10.0.0.2/32\n"


def test_allowed_ips_validation():
    assert parse_allowed_ips("0.0.0.0/0, ::/0") == ("0.0.0.0/0", "::/0")
    assert parse_allowed_ips("10.1.2.3/8") == ("10.0.0.0/8",)
    for bad in ("", "nonsense", "10.0.0.0/33"):
        with pytest.raises(ValueError):
            parse_allowed_ips(bad)


def test_free_address_skips_taken_and_never_network_or_broadcast():
    pool = ipaddress.ip_network("10.9.0.0/30")  # hosts .1 and .2 only
    assert free_address(pool, []) == ipaddress.ip_address("10.9.0.1")
    assert free_address(pool, [ipaddress.ip_address("10.9.0.1")]) == ipaddress.ip_address("10.9.0.2")
    assert free_address(pool, [ipaddress.ip_address("10.9.0.1"), ipaddress.ip_address("10.9.0.2")]) is None


@pytest.mark.parametrize("key, ok", [("A" * 43 + "=", True), ("A" * 44, False), ("A" * 42 + "==", False), ("!" * 43 + "=", False), ("", False)])
def test_key_validation(key, ok):
    assert is_valid_key(key) is ok
