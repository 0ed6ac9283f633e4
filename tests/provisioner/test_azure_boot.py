"""The VM's boot config works: what the fake ARM received as customData, applied with wireguard-go in a
network namespace the way systemd-networkd would apply it, carries the delivered client config's traffic."""
from __future__ import annotations

import base64
import ipaddress
import json
import sys
from pathlib import Path

import pytest
import yaml

from bot.store.model import SessionState
from provisioner import bootconfig
from provisioner.wireguard import Secret, ServerConfig, ServerPeer
from tests.fakes.arm import FakeArm
from tests.fakes.netns import SERVER_LAN, TUNNEL_SERVER, run
from tests.provisioner.test_azure import azure, customdata_of, settle
from tests.support.factories import incoming


def networkd_sections(text: str) -> list[tuple[str, dict[str, str]]]:
    """systemd unit syntax: repeated [Section]s of Key=Value lines."""
    sections: list[tuple[str, dict[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1], {}))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][1][key.strip()] = value.strip()
    return sections


def apply_like_networkd(lab, files: dict[str, str], tmp_path: Path) -> None:
    """What systemd-networkd does with the .netdev/.network and sysctl files, done with wg and ip."""
    netdev = networkd_sections(files[bootconfig.NETDEV])
    wireguard = next(values for name, values in netdev if name == "WireGuard")
    args = ["wg", "set", lab.server_if, "listen-port", wireguard["ListenPort"]]
    key_file = tmp_path / "server.key"
    key_file.write_text(files[wireguard["PrivateKeyFile"]])
    args += ["private-key", str(key_file)]
    for i, (name, peer) in enumerate(netdev):
        if name != "WireGuardPeer":
            continue
        args += ["peer", peer["PublicKey"], "allowed-ips", peer["AllowedIPs"].replace(" ", "")]
        if "PresharedKeyFile" in peer:
            psk = tmp_path / f"peer{i}.psk"
            psk.write_text(files[peer["PresharedKeyFile"]])
            args += ["preshared-key", str(psk)]
    run(*lab.in_server(*args))
    network = dict(networkd_sections(files[bootconfig.NETWORK]))["Network"]
    run("ip", "-n", lab.server_ns, "addr", "flush", "dev", lab.server_if)
    run("ip", "-n", lab.server_ns, "addr", "add", network["Address"], "dev", lab.server_if)
    key, value = files[bootconfig.SYSCTL].split("=")
    run(*lab.in_server("sysctl", "-w", f"{key.strip()}={value.strip()}"))
    if network.get("IPMasquerade") in ("ipv4", "both", "yes"):
        masquerade_like_networkd(lab, str(ipaddress.ip_interface(network["Address"]).network))


def masquerade_like_networkd(lab, prefix: str) -> None:
    """What IPMasquerade=ipv4 makes systemd-networkd install over netlink (firewall-util-nft.c):
    table ip io.systemd.nat, a set masq_saddr holding the address's prefix, a postrouting rule."""
    rules = (
        "table ip io.systemd.nat {\n"
        "  set masq_saddr { type ipv4_addr; flags interval; }\n"
        "  chain postrouting { type nat hook postrouting priority srcnat + 1; policy accept; ip saddr @masq_saddr masquerade; }\n"
        "}\n"
        f"add element ip io.systemd.nat masq_saddr {{ {prefix} }}\n"
    )
    run(*lab.in_server("nft", "-f", "/dev/stdin"), input=rules.encode())


DNS_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 53))
while True:
    q, peer = s.recvfrom(512)
    question = q[12:q.index(b"\\0", 12) + 5]
    s.sendto(q[:2] + b"\\x81\\x80\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00" + question
             + b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04" + socket.inet_aton(sys.argv[2]), peer)
"""
DNS_CLIENT = """
import socket, sys
q = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00" + b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\\x00\\x00\\x01\\x00\\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(q, (sys.argv[1], 53)); r = s.recv(512)
print(socket.inet_ntoa(r[-4:]))
"""
CALLBACK_RECORDER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        open(sys.argv[2], "a").write(self.path + "\\n"); self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def systemd_stubs(tmp_path: Path, files: dict[str, str], *, networkctl_fails: bool = False, iptables_nat: str | None = None) -> Path:
    """Only the systemd front ends are stood in for (no systemd in a namespace); everything the
    script checks — the interface, its address, the UDP port, wg, forwarding, the resolver — is real."""
    import shutil

    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    sysctl_file = tmp_path / "sysctl.conf"
    sysctl_file.write_text(files[bootconfig.SYSCTL])
    real_sysctl = shutil.which("sysctl")
    scripts = {
        "sysctl": f'#!/bin/sh\nif [ "$1" = --system ]; then exec {real_sysctl} -q -p {sysctl_file}; fi\nexec {real_sysctl} "$@"\n',
        "networkctl": "#!/bin/sh\nexit 1\n" if networkctl_fails else "#!/bin/sh\nexit 0\n",
        "systemctl": "#!/bin/sh\nexit 0\n",
    }
    if iptables_nat is not None:  # what `iptables -t nat -S POSTROUTING` prints (no iptables here)
        (tmp_path / "iptables-nat").write_text(iptables_nat)
        scripts["iptables"] = f"#!/bin/sh\nexec cat {tmp_path / 'iptables-nat'}\n"
    for name, text in scripts.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    return stubs


def run_server_up_script(lab, files: dict[str, str], tmp_path: Path, *, networkctl_fails: bool = False, wait: int = 5,
                         iptables_nat: str | None = None) -> tuple[int, str, list[str]]:
    """The boot's last step, as delivered, run in the "VM" namespace; returns (exit code, console, callbacks)."""
    import os
    import subprocess
    import time

    script = tmp_path / "server-up"
    script.write_text(files[bootconfig.SERVER_UP])
    console, hits, callback = tmp_path / "console", tmp_path / "hits", tmp_path / "callback-url"
    for f in (console, hits):
        f.write_text("")
    callback.write_text("http://127.0.0.1:8099/api/server-up/abc/" + "t" * 43 + "\n")
    lab.spawn(lab.in_server(sys.executable, "-c", CALLBACK_RECORDER, "8099", str(hits)))
    time.sleep(0.3)
    stubs = systemd_stubs(tmp_path, files, networkctl_fails=networkctl_fails, iptables_nat=iptables_nat)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "VPN_WG_IF": lab.server_if, "VPN_CONSOLE": str(console),
           "VPN_CALLBACK_FILE": str(callback), "VPN_UP_WAIT_SECONDS": str(wait)}
    done = subprocess.run(lab.in_server("bash", str(script)), env=env, capture_output=True, timeout=60)
    return done.returncode, console.read_text(), hits.read_text().split()


@pytest.mark.netns
async def test_boot_config_carries_the_delivered_clients_traffic_and_names(lab, make_runtime, channel, tmp_path):
    arm = await FakeArm(public_ip=SERVER_LAN).start()  # the "VM" is the server namespace
    try:
        async with make_runtime(provider=azure(arm)) as rt:
            await rt.dispatcher.handle(incoming("/vpn start"))
            await settle(rt)
            assert [s.state for s in await rt.store.sessions(list(SessionState))] == [SessionState.READY]
        cloud = yaml.safe_load(customdata_of(arm))
        files = {f["path"]: f["content"] for f in cloud["write_files"]}
        assert cloud["runcmd"] == [["bash", bootconfig.SERVER_UP]]  # one set -euo pipefail script, not lines sh carries on after
        apply_like_networkd(lab, files, tmp_path)
        conf = tmp_path / "vpn-azure.conf"
        conf.write_text(next(s for s in channel.sent if s.kind == "config").text)
        assert f"Endpoint = {SERVER_LAN}:51820" in conf.read_text()
        dns = next(line.split("=", 1)[1].strip() for line in conf.read_text().splitlines() if line.startswith("DNS"))
        assert dns == TUNNEL_SERVER  # full tunnel, no WG_DNS: the server's own resolver
        # systemd-resolved's DNSStubListenerExtra stands where the drop-in puts it: a tiny resolver.
        assert f"DNSStubListenerExtra={dns}" in files[bootconfig.RESOLVED_DROPIN]
        lab.spawn(lab.in_server(sys.executable, "-c", DNS_SERVER, dns, "192.0.2.53"))
        code, console, hits = run_server_up_script(lab, files, tmp_path)
        assert code == 0 and "vpn-wg-up" in console and len(hits) == 1  # proven up, then signalled
        lab.apply_client_config(conf)
        assert lab.tcp_through_tunnel() == "echo:through the tunnel"
        looked_up = run(*lab.in_client(sys.executable, "-c", DNS_CLIENT, dns, "intranet.example.org"))
        assert looked_up.strip() == "192.0.2.53"
    finally:
        await arm.stop()


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.parametrize("broken", ["networkctl fails", "interface never configured"])
def test_a_boot_whose_wireguard_step_fails_never_reports_up(lab, tmp_path, broken):
    files = {f.path: f.content for f in bootconfig.boot_files(_server(), tunnel_dns=False)}
    if broken == "interface never configured":
        run("ip", "-n", lab.server_ns, "addr", "flush", "dev", lab.server_if)  # as if networkd rejected the .netdev
    code, console, hits = run_server_up_script(lab, files, tmp_path, networkctl_fails=broken == "networkctl fails", wait=2)
    assert code != 0
    assert "vpn-wg-up" not in console and "vpn-boot:" in console
    assert hits == []


@pytest.mark.netns
@pytest.mark.parametrize("nat, up", [
    ("none", False),  # IPMasquerade failed: clients would connect and reach nothing
    ("another prefix", False),
    ("nftables, as networkd makes it", True),
    ("iptables, as networkd makes it without nftables", True),
])
def test_the_boot_proof_includes_the_masquerade_rule(lab, tmp_path, nat, up):
    """Issue 18.4: interface, address, port and forwarding up, but no NAT: never "up"."""
    files = {f.path: f.content for f in bootconfig.boot_files(_server(), tunnel_dns=False)}
    iptables_nat = None
    if nat == "another prefix":
        masquerade_like_networkd(lab, "10.78.0.0/24")
    elif nat.startswith("nftables"):
        masquerade_like_networkd(lab, "10.77.0.0/24")
    elif nat.startswith("iptables"):
        iptables_nat = "-P POSTROUTING ACCEPT\n-A POSTROUTING -s 10.77.0.0/24 -j MASQUERADE\n"
    code, console, hits = run_server_up_script(lab, files, tmp_path, wait=2, iptables_nat=iptables_nat)
    if up:
        assert code == 0 and "vpn-wg-up" in console and len(hits) == 1, console
    else:
        assert code != 0 and hits == []
        assert "vpn-wg-up" not in console and "vpn-boot: no masquerade rule for 10.77.0.0/24" in console


def _server() -> ServerConfig:
    return ServerConfig(Secret("S" * 43 + "="), "10.77.0.1/24", 51820, (ServerPeer("P" * 43 + "=", Secret("K" * 43 + "="), ("10.77.0.2/32",)),))


def test_cloud_config_is_yaml_cloud_init_reads():
    url = Secret("https://bot.example.org/api/server-up/ab/" + "t" * 43)
    text = bootconfig.cloud_config(_server(), callback_url=url, tunnel_dns=True)
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    assert files[bootconfig.KEY]["content"] == "S" * 43 + "=\n"
    assert files[bootconfig.KEY]["permissions"] == "0640" and files[bootconfig.KEY]["owner"] == "root:systemd-network"
    assert "wireguard" not in doc  # cloud-init's own module may apt-install: not used
    assert doc["runcmd"] == [["bash", bootconfig.SERVER_UP]]
    assert files[bootconfig.CALLBACK_FILE]["content"] == url.reveal() + "\n" and files[bootconfig.CALLBACK_FILE]["permissions"] == "0600"
    script = files[bootconfig.SERVER_UP]["content"]
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script and url.reveal() not in script
    assert files[bootconfig.RESOLVED_DROPIN]["content"] == "[Resolve]\nDNSStubListenerExtra=10.77.0.1\n"
    import subprocess

    assert subprocess.run(["bash", "-n"], input=script.encode()).returncode == 0


def test_ignition_for_flatcar():
    doc = json.loads(bootconfig.ignition(_server(), callback_url=Secret("https://bot.example.org/r")))
    assert doc["ignition"]["version"] == "3.3.0"
    files = {f["path"]: f for f in doc["storage"]["files"]}
    key = files[bootconfig.KEY]
    assert key["mode"] == 0o640 and key["group"] == {"name": "systemd-network"}
    assert base64.b64decode(key["contents"]["source"].split(",", 1)[1]).decode() == "S" * 43 + "=\n"
    assert base64.b64decode(files[bootconfig.CALLBACK_FILE]["contents"]["source"].split(",", 1)[1]).decode() == "https://bot.example.org/r\n"
    assert bootconfig.SERVER_UP in doc["systemd"]["units"][0]["contents"]


def test_custom_data_limit():
    assert base64.b64decode(bootconfig.custom_data("#cloud-config\n")) == b"#cloud-config\n"
    with pytest.raises(ValueError):
        bootconfig.custom_data("x" * 60_000)
