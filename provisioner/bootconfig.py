"""Boot configs that bring a fresh VM straight up as a WireGuard server: pure text, no I/O.

systemd-networkd does the work (in-kernel WireGuard since Linux 5.6, configured over netlink, no
packages to install): a `.netdev` with the keys and the peer, a `.network` with the address and
masquerading, and IP forwarding in sysctl. Ubuntu gets it as cloud-init `#cloud-config`
(`write_files` + `runcmd`), Flatcar as Ignition JSON. At the end of boot the VM may call back a
signed URL so the service hears "server up" from the server itself.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Sequence

from provisioner.wireguard import ServerConfig

NETDEV = "/etc/systemd/network/50-wg0.netdev"
NETWORK = "/etc/systemd/network/50-wg0.network"
KEY = "/etc/systemd/network/50-wg0.key"
SYSCTL = "/etc/sysctl.d/90-wireguard-forward.conf"
CUSTOM_DATA_LIMIT = 64 * 1024


@dataclass(frozen=True)
class BootFile:
    path: str
    content: str
    mode: int = 0o644
    group: str = "root"


def wireguard_files(server: ServerConfig, *, interface: str = "wg0") -> list[BootFile]:
    """The networkd and sysctl files; the private key sits in its own 0640 file, group systemd-network."""
    netdev = [
        "[NetDev]",
        f"Name={interface}",
        "Kind=wireguard",
        "",
        "[WireGuard]",
        f"PrivateKeyFile={KEY}",
        f"ListenPort={server.listen_port}",
    ]
    files = [BootFile(KEY, server.private_key.reveal() + "\n", 0o640, "systemd-network")]
    for i, peer in enumerate(server.peers):
        netdev += ["", "[WireGuardPeer]", f"PublicKey={peer.public_key}"]
        if peer.preshared_key is not None:
            psk_path = f"/etc/systemd/network/50-wg0-peer{i}.psk"
            netdev.append(f"PresharedKeyFile={psk_path}")
            files.append(BootFile(psk_path, peer.preshared_key.reveal() + "\n", 0o640, "systemd-network"))
        netdev.append(f"AllowedIPs={', '.join(peer.allowed_ips)}")
    network = [
        "[Match]",
        f"Name={interface}",
        "",
        "[Network]",
        f"Address={server.address}",
        # Clients' traffic leaves with the VM's own address: no NIC IP forwarding needed in Azure.
        "IPMasquerade=ipv4",
    ]
    files += [
        BootFile(NETDEV, "\n".join(netdev) + "\n", 0o640, "systemd-network"),
        BootFile(NETWORK, "\n".join(network) + "\n"),
        BootFile(SYSCTL, "net.ipv4.ip_forward = 1\n"),
    ]
    return files


def _ready_command(ready_url: str) -> list[str]:
    # python3 is always there (cloud-init is Python); curl is not on every minimal image.
    script = (
        "import time,urllib.request\n"
        "for i in range(30):\n"
        "    try:\n"
        f"        urllib.request.urlopen(urllib.request.Request({ready_url!r}, method='POST'), timeout=10); break\n"
        "    except Exception: time.sleep(5)\n"
    )
    return ["python3", "-c", script]


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar: JSON string syntax is valid YAML and escapes everything."""
    return json.dumps(text)


def cloud_config(server: ServerConfig, *, ready_url: str | None = None) -> str:
    """`#cloud-config` for Ubuntu. Avoids cloud-init's own `wireguard:` module (it may apt-install)."""
    lines = ["#cloud-config", "write_files:"]
    for f in wireguard_files(server):
        lines += [
            f"  - path: {f.path}",
            f"    owner: root:{f.group}",
            f"    permissions: '{f.mode:04o}'",
            f"    content: {_yaml_str(f.content)}",
        ]
    commands: list[Sequence[str]] = [["sysctl", "--system"], ["networkctl", "reload"], ["networkctl", "up", "wg0"]]
    if ready_url:
        commands.append(_ready_command(ready_url))
    lines.append("runcmd:")
    for cmd in commands:
        lines.append("  - [" + ", ".join(_yaml_str(part) for part in cmd) + "]")
    return "\n".join(lines) + "\n"


def ignition(server: ServerConfig, *, ready_url: str | None = None) -> str:
    """Ignition 3.3 JSON for Flatcar: the same files; networkd picks them up on first boot."""
    files = []
    for f in wireguard_files(server):
        data = base64.b64encode(f.content.encode()).decode()
        entry = {"path": f.path, "mode": f.mode, "contents": {"source": f"data:;base64,{data}"}}
        if f.group != "root":
            entry["group"] = {"name": f.group}
        files.append(entry)
    units = []
    if ready_url:
        units.append(
            {
                "name": "vpn-ready.service",
                "enabled": True,
                "contents": "[Unit]\nAfter=systemd-networkd.service network-online.target\nWants=network-online.target\n\n"
                "[Service]\nType=oneshot\n"
                f"ExecStart=/usr/bin/curl -fsS --retry 30 --retry-all-errors --retry-delay 5 -X POST {ready_url}\n\n"
                "[Install]\nWantedBy=multi-user.target\n",
            }
        )
    doc = {"ignition": {"version": "3.3.0"}, "storage": {"files": files}, "systemd": {"units": units}}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def custom_data(text: str) -> str:
    """Base64 as ARM wants customData; refuses what Azure would reject (over 64 KiB)."""
    encoded = base64.b64encode(text.encode()).decode()
    if len(encoded) > CUSTOM_DATA_LIMIT:
        raise ValueError(f"customData is {len(encoded)} bytes; Azure allows {CUSTOM_DATA_LIMIT}")
    return encoded
