"""The delivered config carries real traffic: wireguard-go in two network namespaces, the `host` provider.

The bot runs on the server host (inside its namespace), issues a peer on the standing interface,
and the client host applies the delivered .conf exactly as a user would. After `/vpn stop`, after
expiry, and after crashes, the peer must be gone and traffic must stop.
"""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.fakes.netns import POOL, SERVER_LAN, run
from tests.support.apprun import LiveConsole, app_env, console
from tests.support.qrtools import decode_qr

pytestmark = pytest.mark.netns


def host_env(lab, tmp_path: Path, **extra: str) -> dict[str, str]:
    return app_env(
        tmp_path / "data",
        VPN_PROVIDER="host",
        WG_INTERFACE=lab.server_if,
        WG_ENDPOINT=SERVER_LAN,  # the port is read from the interface
        WG_POOL=POOL,
        WG_DNS="10.77.0.1",
        **extra,
    )


def delivered(out_dir: Path) -> Path:
    (conf,) = sorted(out_dir.glob("*.conf"))
    return conf


def secrets_of(conf: Path) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in conf.read_text().splitlines() if line.startswith(("PrivateKey", "PresharedKey"))]


def assert_no_secrets(conf: Path, *texts: str, data_dir: Path) -> None:
    for secret in secrets_of(conf):
        for text in texts:
            assert secret not in text
        for path in data_dir.iterdir():
            assert secret.encode() not in path.read_bytes(), f"{path} holds a secret"


def test_config_carries_traffic_until_stopped(lab, tmp_path):
    env = host_env(lab, tmp_path)
    out = tmp_path / "out"
    t0 = time.monotonic()
    started = console(["/vpn start"], env, "--out", str(out), prefix=lab.in_server())
    elapsed = time.monotonic() - t0
    assert started.returncode == 0, started.stderr
    assert "adding your peer" in started.stdout and "Your VPN is ready" in started.stdout
    conf = delivered(out)
    text = conf.read_text()
    assert f"Endpoint = {SERVER_LAN}:{lab.port}" in text and "DNS = 10.77.0.1" in text
    assert "Address = 10.77.0.2/32" in text  # .1 is the interface's own address: never handed out
    assert decode_qr(conf.with_suffix(".png").read_bytes()) == text
    assert len(lab.server_peers()) == 1
    in_process = re.search(r"ready at \S+ after ([\d.]+)s", started.stderr).group(1)
    print(f"\n/vpn start -> config delivered, host provider: {in_process}s in-process, {elapsed:.2f}s whole process")

    lab.apply_client_config(conf)
    assert lab.tcp_through_tunnel() == "echo:through the tunnel"

    saved = tmp_path / "saved.conf"  # the console deletes the delivered file when the session ends
    saved.write_text(text)
    stopped = console(["/vpn stop"], env, "--out", str(out), prefix=lab.in_server())
    assert stopped.returncode == 0, stopped.stderr
    assert "has ended (stopped by you)" in stopped.stdout
    assert not conf.exists()
    assert lab.server_peers() == []
    assert lab.tcp_through_tunnel(timeout=3).startswith("FAILED")
    assert_no_secrets(saved, started.stderr, stopped.stderr, stopped.stdout, data_dir=tmp_path / "data")


def test_second_user_gets_the_next_free_address(lab, tmp_path):
    env = host_env(lab, tmp_path, VPN_USERS="console:alice,console:bob")
    a = console(["/vpn start"], env, "--out", str(tmp_path / "a"), "--as", "console:alice", prefix=lab.in_server())
    b = console(["/vpn start"], env, "--out", str(tmp_path / "b"), "--as", "console:bob", prefix=lab.in_server())
    assert a.returncode == b.returncode == 0
    assert "Address = 10.77.0.2/32" in delivered(tmp_path / "a").read_text()
    assert "Address = 10.77.0.3/32" in delivered(tmp_path / "b").read_text()
    lab.apply_client_config(delivered(tmp_path / "b"))
    assert lab.tcp_through_tunnel() == "echo:through the tunnel"
    console(["/vpn stop console:alice", "/vpn stop console:bob"], env, prefix=lab.in_server())
    assert lab.server_peers() == []


def test_crash_after_ready_then_expiry_still_removes_the_peer(lab, tmp_path):
    env = host_env(lab, tmp_path, VPN_SESSION_MINUTES="1")
    live = LiveConsole(env, "--out", str(tmp_path / "out"), prefix=lab.in_server())
    live.type("/vpn start")
    live.wait_for("Your VPN is ready")
    log = live.kill()
    conf = delivered(tmp_path / "out")
    lab.apply_client_config(conf)
    assert lab.tcp_through_tunnel() == "echo:through the tunnel"
    # The store is the clock reap reads: end the session now instead of waiting out its minute.
    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
    now = datetime.now(timezone.utc).isoformat()  # its end, and when a sweep is to look at it (the indexed due time)
    assert db.execute("UPDATE sessions SET expires_at=?, due_at=?", (now, now)).rowcount == 1
    db.commit()
    db.close()
    reaped = subprocess.run(
        [*lab.in_server(sys.executable, str(Path(__file__).resolve().parents[2] / "app.py"), "reap")], env=env, capture_output=True, text=True, timeout=60
    )
    assert reaped.returncode == 0, reaped.stderr
    assert lab.server_peers() == []
    assert lab.tcp_through_tunnel(timeout=3).startswith("FAILED")
    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
    assert db.execute("SELECT state FROM sessions").fetchall() == [("deleted",)]
    assert_no_secrets(conf, log, reaped.stderr, data_dir=tmp_path / "data")


def test_crash_mid_provisioning_is_resumed_and_leaves_one_peer(lab, tmp_path):
    slow_wg = "sh -c 'sleep 0.7; exec wg \"$@\"' wg"  # every wg call takes a while: time to crash mid-way
    live = LiveConsole(host_env(lab, tmp_path, WG_COMMAND=slow_wg, VPN_LEASE_SECONDS="3"), "--out", str(tmp_path / "first"), prefix=lab.in_server())
    live.type("/vpn start")
    live.wait_for("adding your peer")
    time.sleep(1.0)  # inside the `wg set` that adds the peer, or just after it
    live.kill()
    assert not (tmp_path / "first").exists() or not list((tmp_path / "first").glob("*.conf"))
    time.sleep(3)  # the killed process's lease runs out; only then does another process take over

    env = host_env(lab, tmp_path, VPN_LEASE_SECONDS="3")
    resumed = console(["/vpn status"], env, "--out", str(tmp_path / "second"), prefix=lab.in_server())
    assert resumed.returncode == 0, resumed.stderr
    assert "restarted while setting up" in resumed.stdout
    conf = delivered(tmp_path / "second")
    pub = re.search(r"PublicKey = (\S+)", conf.read_text())
    assert pub
    assert len(lab.server_peers()) == 1  # the half-made peer of the crashed attempt is gone
    lab.apply_client_config(conf)
    assert lab.tcp_through_tunnel() == "echo:through the tunnel"
    console(["/vpn stop"], env, prefix=lab.in_server())
    assert lab.server_peers() == []


def test_reap_removes_a_peer_no_session_owns(lab, tmp_path):
    """A store that was lost or wiped: the interface still has the bot's peer; reconcile removes it."""
    env = host_env(lab, tmp_path)
    assert console(["/vpn start"], env, "--out", str(tmp_path / "out"), prefix=lab.in_server()).returncode == 0
    # A peer outside the pool is not the bot's and must stay.
    static = run("wg", "pubkey", input=run("wg", "genkey").encode()).strip()
    run(*lab.in_server("wg", "set", lab.server_if, "peer", static, "allowed-ips", "192.168.77.5/32"))
    for path in (tmp_path / "data").glob("vpn-bot.sqlite3*"):
        path.unlink()
    reaped = subprocess.run(
        [*lab.in_server(sys.executable, str(Path(__file__).resolve().parents[2] / "app.py"), "reap")], env=env, capture_output=True, text=True, timeout=60
    )
    assert reaped.returncode == 0, reaped.stderr
    assert lab.server_peers() == [static]


def test_bring_your_own_key_peer_settings_carry_traffic(lab, tmp_path):
    """The user's app made the key pair; the bot saw only the public key and posted the peer settings."""
    env = host_env(lab, tmp_path)
    private = run("wg", "genkey").strip()
    public = run("wg", "pubkey", input=private.encode()).strip()
    started = console([f"/vpn start key={public}"], env, "--out", str(tmp_path / "out"), prefix=lab.in_server())
    assert started.returncode == 0, started.stderr
    assert not (tmp_path / "out").exists()  # nothing secret to deliver
    settings = started.stdout.split("Peer settings for your own key", 1)[1].split("\n", 1)[1]
    settings = settings[: settings.index("PersistentKeepalive")] + "PersistentKeepalive = 25\n"
    assert private not in started.stdout + started.stderr
    conf = tmp_path / "byo.conf"  # what the user's app holds: their private key + the posted settings
    conf.write_text(settings.replace("# PrivateKey = (yours: it stays in your WireGuard app)", f"PrivateKey = {private}"))
    lab.apply_client_config(conf)
    assert lab.tcp_through_tunnel() == "echo:through the tunnel"
    console(["/vpn stop"], env, prefix=lab.in_server())
    assert lab.server_peers() == []
