"""Issue 18.7: a brought public key cannot take over another user's peer on the `host` provider, and
the interface's own key is no client key. wireguard-go in network namespaces, the real app."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from provisioner.base import ProvisionError, ServerSpec
from provisioner.host import HostProvider
from tests.fakes.netns import POOL, SERVER_LAN, run
from tests.provisioner.test_host_tunnel import host_env
from tests.support.apprun import console

pytestmark = pytest.mark.netns


def _keypair() -> tuple[str, str]:
    private = run("wg", "genkey").strip()
    return private, run("wg", "pubkey", input=private.encode()).strip()


def _allowed_ips(lab) -> dict[str, str]:
    out = run(*lab.in_server("wg", "show", lab.server_if, "allowed-ips"))
    return dict(line.split("\t", 1) for line in out.strip().splitlines())


def _states(tmp_path) -> dict[str, str]:
    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
    try:
        return dict(db.execute("SELECT owner, state FROM sessions ORDER BY created_at").fetchall())
    finally:
        db.close()


def test_a_key_in_use_or_the_servers_own_is_refused_and_the_peer_untouched(lab, tmp_path):
    env = host_env(lab, tmp_path, VPN_USERS="console:alice,console:bob")
    _, alice_key = _keypair()
    as_ = lambda who: ("--as", f"console:{who}")  # noqa: E731

    alice = console([f"/vpn start key={alice_key}"], env, *as_("alice"), prefix=lab.in_server())
    assert alice.returncode == 0 and "Peer settings for your own key" in alice.stdout, alice.stderr
    assert _allowed_ips(lab) == {alice_key: "10.77.0.2/32"}

    bob = console([f"/vpn start key={alice_key}", "/vpn stop"], env, *as_("bob"), prefix=lab.in_server())
    assert bob.returncode == 0, bob.stderr
    assert "already in use by another VPN session" in bob.stdout
    assert "10.77.0.2" not in bob.stdout and "Peer settings" not in bob.stdout  # nothing of alice's tunnel shown
    assert _allowed_ips(lab) == {alice_key: "10.77.0.2/32"}  # bob's stop had nothing to remove
    assert _states(tmp_path) == {"console:alice": "ready"}  # bob got no session at all

    server_key = run(*lab.in_server("wg", "show", lab.server_if, "public-key")).strip()
    mirror = console([f"/vpn start key={server_key}"], env, *as_("bob"), prefix=lab.in_server())
    assert mirror.returncode == 0, mirror.stderr
    assert "the VPN server's own, not your device's" in mirror.stdout and "Peer settings" not in mirror.stdout
    assert _allowed_ips(lab) == {alice_key: "10.77.0.2/32"}
    assert _states(tmp_path)["console:bob"] == "failed"

    console(["/vpn stop"], env, *as_("alice"), prefix=lab.in_server())
    assert _allowed_ips(lab) == {}


async def test_the_provider_refuses_a_peer_whose_address_another_live_session_holds(lab):
    """Two starts with one key racing past the service's check: the second finds the first's peer,
    whose address the store says is another live session's, and refuses instead of adopting it."""
    import ipaddress

    _, key = _keypair()
    provider = HostProvider(lab.server_if, SERVER_LAN, ipaddress.ip_network(POOL), wg_command=lab.in_server("wg"),
                            ip_command=["ip", "-n", lab.server_ns])
    holders: dict[str, str] = {}

    def spec(session_id: str) -> ServerSpec:
        async def reserve(address: str) -> bool:
            return holders.setdefault(address, session_id) == session_id

        expires = datetime.now(timezone.utc) + timedelta(minutes=5)
        return ServerSpec(session_id, "console:x", "host", expires, key, None, reserve_address=reserve)

    async def quiet(text: str) -> None:
        pass

    first = await provider.create(spec("a" * 10), quiet)
    assert first.client_address == "10.77.0.2/32"
    assert (await provider.create(spec("a" * 10), quiet)).client_address == "10.77.0.2/32"  # the same session again: a retry
    with pytest.raises(ProvisionError) as refused:
        await provider.create(spec("b" * 10), quiet)
    assert "already in use by another VPN session" in refused.value.user_message
    assert _allowed_ips(lab) == {key: "10.77.0.2/32"}
