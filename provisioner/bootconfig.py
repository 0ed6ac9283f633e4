"""Boot configs that bring a fresh VM straight up as a WireGuard server: pure text, no I/O.

systemd-networkd does the work (in-kernel WireGuard since Linux 5.6, configured over netlink, no
packages to install): a `.netdev` with the keys and the peer, a `.network` with the address and
masquerading, and IP forwarding in sysctl; for full tunnels systemd-resolved also listens on the
server's tunnel address so clients resolve names through the tunnel. Ubuntu gets it as cloud-init
`#cloud-config` (`write_files` + `runcmd`), Flatcar as Ignition JSON. The last step is one
`set -euo pipefail` script that proves the interface is up, and the masquerade rule in place, before
it says so: on the serial console (read through boot diagnostics) and, when the bot is reachable, by
POSTing a one-time URL. Then, with that URL, a timer reports the tunnel's latest handshake and bytes to
the bot every minute (issue 23): the VM is the only one who can see them.
"""
from __future__ import annotations

import base64
import ipaddress
import json
from dataclasses import dataclass

from provisioner.wireguard import Secret, ServerConfig

NETDEV = "/etc/systemd/network/50-wg0.netdev"
NETWORK = "/etc/systemd/network/50-wg0.network"
KEY = "/etc/systemd/network/50-wg0.key"
SYSCTL = "/etc/sysctl.d/90-wireguard-forward.conf"
RESOLVED_DROPIN = "/etc/systemd/resolved.conf.d/90-vpn-tunnel-dns.conf"
SERVER_UP = "/opt/vpn-bot/server-up"
TRAFFIC_REPORT = "/opt/vpn-bot/traffic-report"
TRAFFIC_SERVICE = "/etc/systemd/system/vpn-traffic.service"
TRAFFIC_TIMER = "/etc/systemd/system/vpn-traffic.timer"
CALLBACK_FILE = "/etc/vpn-bot/server-up-url"
SERIAL_MARKER = "vpn-wg-up"  # + the VM's name, on the serial console once the tunnel is proven up
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


SERVER_UP_SCRIPT = r"""#!/bin/bash
# Brings the WireGuard server up and proves it before anyone hears "server up"; any failure stops
# here, loudly (cloud-init logs it, the serial console shows it) and nothing is signalled.
set -euo pipefail
IFACE="${VPN_WG_IF:-wg0}"
ADDRESS="__ADDRESS__"
NAT_NET="__NAT_NET__"
PORT="__PORT__"
DNS_ADDR="__DNS_ADDR__"
CONSOLE="${VPN_CONSOLE:-/dev/ttyS0}"
CALLBACK_FILE="${VPN_CALLBACK_FILE:-__CALLBACK_FILE__}"
WAIT="${VPN_UP_WAIT_SECONDS:-90}"

say() { echo "$*" > "$CONSOLE" 2>/dev/null || true; echo "$*" >&2; }
trap 'say "vpn-boot: failed at line $LINENO; the tunnel is not up"' ERR

tunnel_up() {
  [ -n "$(ip -o link show dev "$IFACE" up 2>/dev/null)" ] || return 1
  ip -o addr show dev "$IFACE" | grep -qF " $ADDRESS " || return 1
  ss -Hlun "sport = :$PORT" | grep -q . || return 1
  if command -v wg >/dev/null 2>&1; then [ "$(wg show "$IFACE" listen-port)" = "$PORT" ] || return 1; fi
  [ "$(sysctl -n net.ipv4.ip_forward)" = 1 ]
}
# IPMasquerade= makes networkd install the rule (nftables: table ip io.systemd.nat, a set holding the
# tunnel's prefix and "ip saddr @set masquerade"; iptables where nftables is unavailable). Without
# it clients connect and reach nothing, so no rule, no "up". Accepted: a masquerade rule naming the
# prefix, a set that holds it, or no source at all.
HAS_NET='function has_net(s,  i, rest) {
  rest = " " s " "
  while ((i = index(rest, net)) > 0) {
    if (substr(rest, i - 1, 1) !~ /[0-9.]/ && substr(rest, i + length(net), 1) !~ /[0-9]/) return 1
    rest = substr(rest, i + length(net))
  }
  return 0
}'
NFT_MASQ='
$1 == "table" { table = $2 " " $3 }
$1 == "set" && $NF == "{" { set = table " " $2; next }
set != "" && $1 == "}" && NF == 1 { set = ""; next }
set != "" { if (has_net($0)) member[set] = 1; next }
(" " $0 " ") ~ /[ \t]masquerade[ \t;]/ { n++; rule[n] = $0; where[n] = table }
END {
  for (k = 1; k <= n; k++) {
    r = rule[k]
    if (has_net(r) || r !~ /saddr/) exit 0
    while (match(r, /@[A-Za-z0-9_.]+/)) {
      if (member[where[k] " " substr(r, RSTART + 1, RLENGTH - 1)]) exit 0
      r = substr(r, RSTART + RLENGTH)
    }
  }
  exit 1
}'
IPT_MASQ='/-j MASQUERADE/ { if (has_net($0) || $0 !~ / -s /) ok = 1 } END { exit !ok }'
nat_up() {
  if command -v nft >/dev/null 2>&1 && nft list ruleset 2>/dev/null | awk -v net="$NAT_NET" "$HAS_NET $NFT_MASQ"; then
    return 0
  fi
  command -v iptables >/dev/null 2>&1 && iptables -t nat -S POSTROUTING 2>/dev/null | awk -v net="$NAT_NET" "$HAS_NET $IPT_MASQ"
}
resolver_up() {
  [ -z "$DNS_ADDR" ] || ss -Hlun "sport = :53" | grep -qF "$DNS_ADDR:53"
}
wait_for() {
  for _ in $(seq "$WAIT"); do "$1" && return 0; sleep 1; done
  "$1"
}

sysctl --system >/dev/null
networkctl reload
wait_for tunnel_up || { say "vpn-boot: $IFACE did not come up"; exit 1; }
wait_for nat_up || { say "vpn-boot: no masquerade rule for $NAT_NET (nft or iptables): clients would reach nothing"; exit 1; }
if [ -n "$DNS_ADDR" ]; then
  systemctl restart systemd-resolved  # binds the extra stub listener on the tunnel address
  wait_for resolver_up || { say "vpn-boot: no resolver on $DNS_ADDR:53"; exit 1; }
fi
say "__MARKER__ $(hostname)"
if [ -s "$CALLBACK_FILE" ]; then
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$CALLBACK_FILE" <<'PY'
import sys, time, urllib.error, urllib.request
url = open(sys.argv[1]).read().strip()
for attempt in range(30):
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10)
        sys.exit(0)
    except urllib.error.HTTPError as exc:
        if exc.code < 500 and exc.code != 429:
            sys.exit(f"server-up callback refused: {exc.code}")
    except OSError:
        pass
    time.sleep(5)
sys.exit("server-up callback unreachable")
PY
  else
    curl -fsS --retry 30 --retry-connrefused --retry-delay 5 -X POST -o /dev/null --data "" "$(cat "$CALLBACK_FILE")"
  fi
  if [ -f "__TRAFFIC_TIMER__" ]; then
    systemctl daemon-reload && systemctl enable --now vpn-traffic.timer || say "vpn-boot: traffic reports not started"
  fi
fi
"""

# Every minute (vpn-traffic.timer), the tunnel's figures to the bot over the session's own callback URL.
# With wireguard-tools: `wg show <if> dump` (its first line, the interface's keys, is skipped by awk and
# never printed). Without them (Ubuntu's cloud image has none; networkd needs none): the interface's
# byte counters, and "a handshake" whenever the received bytes moved since the last report.
TRAFFIC_SCRIPT = r"""#!/bin/bash
set -euo pipefail
IFACE="${VPN_WG_IF:-wg0}"
CALLBACK_FILE="${VPN_CALLBACK_FILE:-__CALLBACK_FILE__}"
STATE="${VPN_TRAFFIC_STATE:-/run/vpn-bot-traffic}"
[ -s "$CALLBACK_FILE" ] || exit 0
if command -v wg >/dev/null 2>&1; then
  read -r hs rx tx < <(wg show "$IFACE" dump | awk -F'\t' 'NR > 1 { if ($5 > h) h = $5; r += $6; t += $7 } END { printf "%d %d %d\n", h, r, t }')
else
  rx=$(cat "/sys/class/net/$IFACE/statistics/rx_bytes")
  tx=$(cat "/sys/class/net/$IFACE/statistics/tx_bytes")
  read -r last_rx hs < "$STATE" 2>/dev/null || { last_rx=0; hs=0; }
  if [ "$rx" != "$last_rx" ]; then hs=$(date +%s); fi
  echo "$rx $hs" > "$STATE"
fi
curl -fsS --max-time 20 -X POST -H "Content-Type: application/json" -o /dev/null \
  --data "{\"handshake\": ${hs:-0}, \"rx\": ${rx:-0}, \"tx\": ${tx:-0}}" "$(cat "$CALLBACK_FILE")"
"""
TRAFFIC_UNITS = {
    TRAFFIC_SERVICE: f"[Unit]\nDescription=Report the tunnel's traffic to the VPN bot\n\n[Service]\nType=oneshot\nExecStart=/bin/bash {TRAFFIC_REPORT}\n",
    TRAFFIC_TIMER: "[Unit]\nDescription=Report the tunnel's traffic every minute\n\n[Timer]\nOnActiveSec=60\nOnUnitActiveSec=60\nAccuracySec=5\n\n"
                   "[Install]\nWantedBy=timers.target\n",
}


def server_up_script(server: ServerConfig, *, tunnel_dns: bool) -> str:
    """The boot's last step: wait for the interface (and resolver), prove them, then signal."""
    values = {
        "__ADDRESS__": server.address,
        "__NAT_NET__": str(ipaddress.ip_interface(server.address).network),
        "__PORT__": str(server.listen_port),
        "__DNS_ADDR__": tunnel_address(server) if tunnel_dns else "",
        "__CALLBACK_FILE__": CALLBACK_FILE,
        "__MARKER__": SERIAL_MARKER,
        "__TRAFFIC_TIMER__": TRAFFIC_TIMER,
    }
    text = SERVER_UP_SCRIPT
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def tunnel_address(server: ServerConfig) -> str:
    """The server's own address in the tunnel (where the resolver listens)."""
    return str(ipaddress.ip_interface(server.address).ip)


def boot_files(server: ServerConfig, *, callback_url: Secret | None = None, tunnel_dns: bool = False) -> list[BootFile]:
    """Everything the VM needs: WireGuard, forwarding, the resolver drop-in, the proof-and-signal script."""
    files = wireguard_files(server)
    if tunnel_dns:
        files.append(BootFile(RESOLVED_DROPIN, f"[Resolve]\nDNSStubListenerExtra={tunnel_address(server)}\n"))
    files.append(BootFile(SERVER_UP, server_up_script(server, tunnel_dns=tunnel_dns), 0o700))
    if callback_url is not None:
        # A file, not the script's text: the URL carries the session's one-time token.
        files.append(BootFile(CALLBACK_FILE, callback_url.reveal() + "\n", 0o600))
        files.append(BootFile(TRAFFIC_REPORT, TRAFFIC_SCRIPT.replace("__CALLBACK_FILE__", CALLBACK_FILE), 0o700))
        files += [BootFile(path, text) for path, text in TRAFFIC_UNITS.items()]
    return files


def _yaml_str(text: str) -> str:
    """A YAML double-quoted scalar: JSON string syntax is valid YAML and escapes everything."""
    return json.dumps(text)


def cloud_config(server: ServerConfig, *, callback_url: Secret | None = None, tunnel_dns: bool = False) -> str:
    """`#cloud-config` for Ubuntu. Avoids cloud-init's own `wireguard:` module (it may apt-install).

    runcmd is one command: cloud-init runs runcmd lines as a plain sh script that carries on after a
    failed line, so the whole sequence lives in one `set -euo pipefail` script instead."""
    lines = ["#cloud-config", "write_files:"]
    for f in boot_files(server, callback_url=callback_url, tunnel_dns=tunnel_dns):
        lines += [
            f"  - path: {f.path}",
            f"    owner: root:{f.group}",
            f"    permissions: '{f.mode:04o}'",
            f"    content: {_yaml_str(f.content)}",
        ]
    lines += ["runcmd:", f"  - [{_yaml_str('bash')}, {_yaml_str(SERVER_UP)}]"]
    return "\n".join(lines) + "\n"


def ignition(server: ServerConfig, *, callback_url: Secret | None = None, tunnel_dns: bool = False) -> str:
    """Ignition 3.3 JSON for Flatcar: the same files; networkd picks them up on first boot and a
    oneshot unit runs the same proof-and-signal script."""
    files = []
    for f in boot_files(server, callback_url=callback_url, tunnel_dns=tunnel_dns):
        data = base64.b64encode(f.content.encode()).decode()
        entry = {"path": f.path, "mode": f.mode, "contents": {"source": f"data:;base64,{data}"}}
        if f.group != "root":
            entry["group"] = {"name": f.group}
        files.append(entry)
    unit = {
        "name": "vpn-server-up.service",
        "enabled": True,
        "contents": "[Unit]\nAfter=systemd-networkd.service network-online.target\nWants=network-online.target\n\n"
        f"[Service]\nType=oneshot\nExecStart=/bin/bash {SERVER_UP}\n\n"
        "[Install]\nWantedBy=multi-user.target\n",
    }
    doc = {"ignition": {"version": "3.3.0"}, "storage": {"files": files}, "systemd": {"units": [unit]}}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def custom_data(text: str) -> str:
    """Base64 as ARM wants customData; refuses what Azure would reject (over 64 KiB)."""
    encoded = base64.b64encode(text.encode()).decode()
    if len(encoded) > CUSTOM_DATA_LIMIT:
        raise ValueError(f"customData is {len(encoded)} bytes; Azure allows {CUSTOM_DATA_LIMIT}")
    return encoded
