"""Revocation carries through to the wire: a `host`-provider session in the namespace lab (wireguard-go
in two network namespaces) carries traffic until its owner leaves the Entra group in a fake Graph;
within the cache time plus one sweep the peer is gone from the interface, traffic stops, and the
owner is told why."""
from __future__ import annotations

import ipaddress

import pytest

from bot.store.model import SessionState
from provisioner.host import HostProvider
from tests.fakes.graph import FakeGraph
from tests.fakes.netns import POOL, SERVER_LAN
from tests.support.factories import incoming
from tests.support.governance import ALICE_OID, GROUP_STAFF, CardChannel, graph_env

pytestmark = pytest.mark.netns


@pytest.fixture
async def graph():
    fake = await FakeGraph(members={ALICE_OID: {GROUP_STAFF}}).start()
    yield fake
    await fake.stop()


async def test_leaving_the_group_ends_a_live_host_session_and_removes_its_peer(lab, make_runtime, graph, clock, tmp_path):
    provider = HostProvider(lab.server_if, SERVER_LAN, ipaddress.ip_network(POOL), wg_command=lab.in_server("wg"), ip_command=lab.in_server("ip"))
    ch = CardChannel()
    alice = f"teams:{ALICE_OID}"
    env = graph_env(graph, VPN_SESSION_MINUTES=120, VPN_GROUP_CACHE_SECONDS=60)
    async with make_runtime(users=f"group:{GROUP_STAFF}", provider=provider, channels=[ch], **env) as rt:
        await rt.dispatcher.handle(incoming("/vpn start", user=alice))
        await rt.runner.wait_idle(60)
        (s,) = await rt.store.sessions([SessionState.READY])
        (config,) = [x for x in ch.sent if x.kind == "config"]
        conf = tmp_path / "alice.conf"
        conf.write_text(config.delivery.config.reveal())
        lab.apply_client_config(conf)
        assert lab.tcp_through_tunnel() == "echo:through the tunnel"
        assert lab.server_peers() == [s.client_public_key]

        graph.members[ALICE_OID] = set()  # an admin removes Alice from the group in Entra
        await rt.service.sweep()
        await rt.runner.wait_idle(60)
        assert lab.server_peers() == [s.client_public_key]  # the cached answer holds for up to a minute
        clock.advance(seconds=61)
        await rt.service.sweep()  # one sweep after the cache time
        await rt.runner.wait_idle(60)
        assert (await rt.store.get(s.id)).state is SessionState.DELETED
        assert lab.server_peers() == []
        assert lab.tcp_through_tunnel(timeout=3).startswith("FAILED")
        assert any(f"Your VPN session {s.id} has ended (your access was withdrawn" in t for t in ch.to(alice))
        assert [e.user for e in await rt.store.audit_log() if e.command == f"revoke {s.id}"] == [alice]
