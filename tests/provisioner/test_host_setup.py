"""`app.py host-setup` on a machine with no WireGuard interface yet: a network namespace the test creates."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.host_setup import HostSetupError, plan
from tests.fakes.netns import POOL, bare_namespace
from tests.support.apprun import APP, app_env, console

UPLINK = "10.98.0.1"


@pytest.fixture
def namespace():
    if not (shutil.which("nft") or shutil.which("iptables")):
        pytest.skip("neither nft nor iptables is installed (scripts/install-test-deps.sh installs nftables)")
    with bare_namespace(UPLINK) as ns:
        ifname = f"wgh{ns[-6:]}"
        try:
            yield ns, ifname
        finally:
            subprocess.run(["ip", "-n", ns, "link", "del", ifname], capture_output=True)  # wireguard-go exits with it
            sock = Path(f"/var/run/wireguard/{ifname}.sock")
            for _ in range(50):
                if not sock.exists():
                    break
                time.sleep(0.1)


def in_ns(ns: str, *argv: str, env=None, input: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], env=env, input=input, capture_output=True, text=True, timeout=60)


@pytest.mark.netns
def test_host_setup_creates_a_working_interface_with_forwarding_and_nat(namespace, tmp_path):
    ns, ifname = namespace
    env = app_env(tmp_path / "data", WG_INTERFACE=ifname, WG_POOL=POOL)

    asked = in_ns(ns, sys.executable, APP, "host-setup", env=env)  # no terminal to ask at, no --yes: nothing happens
    assert asked.returncode == 2 and "pass --yes" in asked.stderr
    assert "create WireGuard interface" in asked.stdout and "masquerade" in asked.stdout and "IP forwarding" in asked.stdout
    assert in_ns(ns, "ip", "link", "show", ifname).returncode != 0

    done = in_ns(ns, sys.executable, APP, "host-setup", "--yes", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "PrivateKey" not in done.stdout
    assert in_ns(ns, "wg", "show", ifname, "listen-port").stdout.strip() == "51820"
    assert "10.77.0.1/24" in in_ns(ns, "ip", "-o", "addr", "show", "dev", ifname).stdout
    assert "UP" in in_ns(ns, "ip", "-o", "link", "show", "dev", ifname).stdout
    assert in_ns(ns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    if shutil.which("nft"):
        rules = in_ns(ns, "nft", "list", "ruleset").stdout
        assert "masquerade" in rules and POOL in rules and f'oifname != "{ifname}"' in rules
    else:
        assert "MASQUERADE" in in_ns(ns, "iptables", "-t", "nat", "-S", "POSTROUTING").stdout

    again = in_ns(ns, sys.executable, APP, "host-setup", "--yes", env=env)
    assert again.returncode == 0 and "nothing to change" in again.stdout

    # The host provider now issues peers on it.
    host_env = dict(env, VPN_PROVIDER="host", WG_ENDPOINT=UPLINK)
    started = console(["/vpn start"], host_env, "--out", str(tmp_path / "out"), prefix=["ip", "netns", "exec", ns])
    assert started.returncode == 0, started.stderr
    (conf,) = (tmp_path / "out").glob("*.conf")
    assert f"Endpoint = {UPLINK}:51820" in conf.read_text() and "Address = 10.77.0.2/32" in conf.read_text()
    assert len(in_ns(ns, "wg", "show", ifname, "peers").stdout.split()) == 1
    console(["/vpn stop"], host_env, prefix=["ip", "netns", "exec", ns])


def test_a_missing_interface_stops_serve_and_console_with_one_line(tmp_path):
    env = app_env(tmp_path / "data", VPN_PROVIDER="host", WG_INTERFACE="wgmissing0", WG_ENDPOINT="vpn.example.org")
    for command in ("console", "serve"):
        result = subprocess.run([sys.executable, APP, command], env=env, input="", capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            "error: WG_INTERFACE=wgmissing0: no such network interface here; create it with `vpn-bot host-setup` (docs/how-it-works.md: the host provider)"
        ]


def test_plan_needs_the_tools_and_leaves_out_what_is_in_place(tmp_path):
    import ipaddress

    pool = ipaddress.ip_network(POOL)
    with pytest.raises(HostSetupError, match="apt-get install wireguard-tools"):
        plan("wg9", pool, 51820, which=lambda tool: None if tool == "wg" else f"/usr/bin/{tool}")
    with pytest.raises(HostSetupError, match="neither nft nor iptables"):
        plan("wg9", pool, 51820, which=lambda tool: None if tool in ("nft", "iptables") else f"/usr/bin/{tool}",
             exists=lambda name: True, output=lambda argv: (0, "9: wg9 inet 10.77.0.1/24 scope global\n9: wg9: <POINTOPOINT,UP,LOWER_UP>"))
    (tmp_path / "net/ipv4").mkdir(parents=True)
    (tmp_path / "net/ipv4/ip_forward").write_text("1\n")
    in_place = plan("wg9", pool, 51820, which=lambda tool: f"/usr/bin/{tool}", exists=lambda name: True, proc=tmp_path,
                    output=lambda argv: (0, "9: wg9    inet 10.77.0.1/24 scope global wg9\n9: wg9: <POINTOPOINT,NOARP,UP,LOWER_UP>"))
    assert in_place == []
    fresh = plan("wg9", pool, 51820, which=lambda tool: f"/usr/bin/{tool}", exists=lambda name: False, proc=tmp_path / "nowhere",
                 output=lambda argv: (1, ""))
    shown = "\n".join(step.shown() for step in fresh)
    assert "wireguard-go wg9" in shown and "ip address add 10.77.0.1/24 dev wg9" in shown and "ip_forward" in shown
    assert all(b"PrivateKey" not in (step.stdin or b"") for step in fresh)
    assert not any(step.stdin and step.stdin.decode().strip() in shown for step in fresh)  # the key is never shown
