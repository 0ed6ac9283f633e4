"""WireGuard keys and configs: pure code shared by every provider.

Keys are X25519 from `cryptography`, base64-encoded exactly as `wg genkey` / `wg pubkey` print them.
Private material is wrapped in `Secret` so that an accidental log line or repr never shows it.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

DEFAULT_ALLOWED_IPS = ("0.0.0.0/0", "::/0")
DEFAULT_KEEPALIVE = 25
DEFAULT_PORT = 51820
_TUNNEL_NAME = re.compile(r"^[A-Za-z0-9_=+.-]{1,15}$")


class Secret:
    """A string that never shows itself in repr, str or f-strings; call `.reveal()` on purpose."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class KeyPair:
    private: Secret
    public: str


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair. Cheap (~0.1 ms) but still CPU work: callers on the loop use a thread."""
    key = X25519PrivateKey.generate()
    raw_private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyPair(Secret(base64.b64encode(raw_private).decode()), base64.b64encode(raw_public).decode())


def generate_preshared_key() -> Secret:
    """32 random bytes, as `wg genpsk` makes them."""
    import os

    return Secret(base64.b64encode(os.urandom(32)).decode())


def public_key_of(private: Secret) -> str:
    raw = base64.b64decode(private.reveal())
    key = X25519PrivateKey.from_private_bytes(raw)
    return base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()


def is_valid_key(text: str) -> bool:
    """True for a base64 string of exactly 32 bytes, the only form WireGuard accepts."""
    if not isinstance(text, str) or len(text) != 44 or not text.endswith("="):
        return False
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def is_valid_tunnel_name(name: str) -> bool:
    """The WireGuard apps and wg-quick take the file name as the tunnel name: 1-15 safe characters."""
    return bool(_TUNNEL_NAME.match(name))


@dataclass(frozen=True)
class ClientConfig:
    """Everything a WireGuard app needs to join one server."""

    private_key: Secret | None  # None: the user brought their own key pair (we never see the private half)
    address: str  # e.g. "10.77.0.2/32"
    server_public_key: str
    preshared_key: Secret | None
    endpoint: str  # host:port
    dns: Sequence[str] = ()
    allowed_ips: Sequence[str] = DEFAULT_ALLOWED_IPS
    keepalive: int = DEFAULT_KEEPALIVE
    mtu: int | None = None


def render_client_config(cfg: ClientConfig) -> str:
    """The `.conf` text exactly as the WireGuard apps and wg-quick import it."""
    if cfg.private_key is None:
        key_line = "# PrivateKey = (yours: it stays in your WireGuard app)"
    else:
        key_line = f"PrivateKey = {cfg.private_key.reveal()}"
    lines = ["[Interface]", key_line, f"Address = {cfg.address}"]
    if cfg.dns:
        lines.append(f"DNS = {', '.join(cfg.dns)}")
    if cfg.mtu:
        lines.append(f"MTU = {cfg.mtu}")
    lines += ["", "[Peer]", f"PublicKey = {cfg.server_public_key}"]
    if cfg.preshared_key is not None:
        lines.append(f"PresharedKey = {cfg.preshared_key.reveal()}")
    lines.append(f"AllowedIPs = {', '.join(cfg.allowed_ips)}")
    lines.append(f"Endpoint = {cfg.endpoint}")
    if cfg.keepalive:
        lines.append(f"PersistentKeepalive = {cfg.keepalive}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ServerPeer:
    public_key: str
    preshared_key: Secret | None
    allowed_ips: Sequence[str]


@dataclass(frozen=True)
class ServerConfig:
    """A server interface with its peers, for providers that build a whole server (cloud VMs)."""

    private_key: Secret
    address: str  # e.g. "10.77.0.1/24"
    listen_port: int = DEFAULT_PORT
    peers: Sequence[ServerPeer] = field(default_factory=tuple)


def render_server_config(cfg: ServerConfig) -> str:
    """`wg setconf` form of a server (no wg-quick extras): what a boot config or a test applies."""
    lines = ["[Interface]", f"PrivateKey = {cfg.private_key.reveal()}", f"ListenPort = {cfg.listen_port}"]
    for peer in cfg.peers:
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key}"]
        if peer.preshared_key is not None:
            lines.append(f"PresharedKey = {peer.preshared_key.reveal()}")
        lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
    return "\n".join(lines) + "\n"


def parse_allowed_ips(text: str) -> tuple[str, ...]:
    """Validate a comma-separated CIDR list (WG_ALLOWED_IPS); raises ValueError naming the bad item."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ValueError("at least one network is needed")
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not a network") from None
    return tuple(out)


def free_address(
    pool: ipaddress.IPv4Network | ipaddress.IPv6Network, taken: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The lowest host address in `pool` not in `taken` (network and broadcast are never handed out)."""
    used = set(taken)
    for host in pool.hosts():
        if host not in used:
            return host
    return None
