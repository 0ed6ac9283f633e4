"""Live traffic on the wire (issue 23): a `host`-provider session in the namespace lab (wireguard-go in two
network namespaces). Traffic through the tunnel shows as bytes and a handshake in /vpn status, read
from one `wg show dump` per sweep; a session nobody connects to ends at a short VPN_IDLE_MINUTES and
its peer leaves the interface."""
from __future__ import annotations

import ipaddress
import re
import sys
from datetime import datetime, timedelta, timezone

import pytest

from bot.engine.notices import megabytes
from bot.store.model import SessionState
from provisioner.host import HostProvider
from tests.fakes.netns import POOL, SERVER_LAN, TUNNEL_SERVER, run
from tests.support.factories import incoming

pytestmark = [pytest.mark.netns, pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)]
BLAST = ("import socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"  # paced: wireguard-go drops what its queue cannot hold
         "for i in range(int(sys.argv[3])):\n    s.sendto(b'x' * 1000, (sys.argv[1], int(sys.argv[2])))\n    i % 20 or time.sleep(0.003)\n")


def host(lab) -> HostProvider:
    return HostProvider(lab.server_if, SERVER_LAN, ipaddress.ip_network(POOL), wg_command=lab.in_server("wg"), ip_command=lab.in_server("ip"))


async def test_traffic_through_the_tunnel_shows_in_status(lab, make_runtime, channel, clock, tmp_path):
    clock.now = datetime.now(timezone.utc)  # wg's handshake times are the real clock's
    async with make_runtime(provider=host(lab), VPN_SESSION_MINUTES=60, VPN_TRAFFIC_SECONDS=1) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await rt.runner.wait_idle(60)
        (s,) = await rt.store.sessions([SessionState.READY])
        conf = tmp_path / "alice.conf"
        conf.write_text(next(x for x in channel.sent if x.kind == "config").delivery.config.reveal())
        await rt.service.sweep()
        channel.sent.clear()
        await rt.dispatcher.handle(incoming("/vpn status"))
        assert "not connected yet" in channel.all_text()

        lab.apply_client_config(conf)
        assert lab.tcp_through_tunnel() == "echo:through the tunnel"
        run(*lab.in_client(sys.executable, "-c", BLAST, TUNNEL_SERVER, "9999", "1500"))  # ~1.5 MB up
        client_ip = str(ipaddress.ip_interface(s.client_address).ip)
        run(*lab.in_server(sys.executable, "-c", BLAST, client_ip, "9999", "3000"))  # ~3 MB down
        clock.now = datetime.now(timezone.utc) + timedelta(seconds=2)  # past VPN_TRAFFIC_SECONDS since the last look
        await rt.service.sweep()
        got = await rt.store.get(s.id)
        assert got.handshake_at is not None and abs((clock.now - got.handshake_at).total_seconds()) < 60
        # UDP through wireguard-go may drop some of a burst: at least a megabyte each way arrived and was counted.
        assert 1_000_000 <= got.bytes_in < 4_000_000 and 1_000_000 <= got.bytes_out < 2_500_000, (got.bytes_in, got.bytes_out)
        channel.sent.clear()
        await rt.dispatcher.handle(incoming("/vpn status"))
        text = channel.all_text()
        assert re.search(r"Tunnel     connected — handshake \d+ s ago, ↓ (\d+\.\d) MB ↑ (\d+\.\d) MB", text), text
        assert f"↓ {megabytes(got.bytes_in)} ↑ {megabytes(got.bytes_out)}" in text


async def test_a_session_nobody_uses_ends_at_the_idle_limit(lab, make_runtime, channel, clock):
    clock.now = datetime.now(timezone.utc)
    async with make_runtime(provider=host(lab), VPN_SESSION_MINUTES=60, VPN_IDLE_MINUTES=2, VPN_WARN_MINUTES=1, VPN_TRAFFIC_SECONDS=1) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await rt.runner.wait_idle(60)
        (s,) = await rt.store.sessions([SessionState.READY])
        assert lab.server_peers() == [s.client_public_key]
        clock.advance(seconds=70)
        await rt.service.sweep()
        await rt.runner.wait_idle(60)
        assert any("has not been used" in t for t in channel.texts())
        clock.advance(seconds=60)
        await rt.service.sweep()
        await rt.runner.wait_idle(60)
        assert (await rt.store.get(s.id)).state is SessionState.DELETED
        assert lab.server_peers() == []
        assert f"Your VPN session {s.id} has ended (unused for 2 min)" in channel.all_text()
