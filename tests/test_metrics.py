"""/metrics on its own port: counters move with real sessions, labels never name a user."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bot.settings import Settings, SettingsError
from bot.wiring import build_http_app
from provisioner.base import ServerSpec
from tests.support.apprun import APP, app_env
from tests.support.factories import incoming
from tests.support.loopback import free_port, serve_on_loopback


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return await resp.text()


@pytest.fixture
async def served(make_runtime, monkeypatch):
    """The bot's aiohttp app on a loopback port, with /metrics on another; yields (runtime, bot base URL, metrics port).
    Store-derived gauges are read afresh on every scrape here (these tests scrape before and after a change)."""
    from bot.http import metrics

    monkeypatch.setattr(metrics, "STORE_GAUGES_SECONDS", 0.0)
    holder = {}

    async def start(**env):
        port = free_port()
        runtime = make_runtime(VPN_METRICS_PORT=port, VPN_DRYRUN_STEP_SECONDS=0, **env)
        runner, base = await serve_on_loopback(build_http_app(runtime))
        holder["runner"] = runner
        await runtime.opened()
        return runtime, base, port

    yield start
    if "runner" in holder:
        await holder["runner"].cleanup()


async def test_start_and_stop_move_the_counters(served, channel):
    runtime, base, port = await served()
    before = await scrape(port)
    msg = incoming("/vpn start", user="test:alice", email="alice@example.org", message_id="m-1")
    await runtime.dispatcher.handle(msg)
    await runtime.runner.wait_idle()
    during = await scrape(port)
    assert value(during, "vpn_sessions", state="ready", provider="dryrun") == 1
    assert value(during, "vpn_sessions", state="provisioning", provider="dryrun") == 0
    assert value(during, "vpn_store_up") == 1
    for stage in ("config", "server_up"):
        name = "vpn_provision_seconds_count"
        assert value(during, name, provider="dryrun", stage=stage) == value(before, name, provider="dryrun", stage=stage) + 1

    await runtime.dispatcher.handle(msg)  # the platform re-sends the same message: counted, not run
    await runtime.dispatcher.handle(incoming("/vpn stop", user="test:alice", email="alice@example.org"))
    await runtime.runner.wait_idle()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 404  # never on the bot's public port
    after = await scrape(port)

    assert value(after, "vpn_sessions", state="ready", provider="dryrun") == 0
    assert value(after, "vpn_teardowns_total", provider="dryrun") == value(before, "vpn_teardowns_total", provider="dryrun") + 1
    for outcome, moved in (("handled", 2), ("duplicate", 1)):
        name = "vpn_chat_messages_total"
        assert value(after, name, channel="test", outcome=outcome) == value(before, name, channel="test", outcome=outcome) + moved
    assert value(after, "vpn_http_request_seconds_count", route="/healthz", method="GET", status="200") >= 1
    assert value(after, "vpn_http_request_seconds_count", route="unmatched", method="GET", status="404") >= 1
    assert "Your VPN session" in channel.all_text()

    # No user identity anywhere in the exposition: not the key, not the email, not the conversation.
    lowered = after.lower()
    for needle in ("alice", "example.org", "test:", "c1"):
        assert needle not in lowered, needle
    label_names = {k for (_, labels) in samples(after) for k, _ in labels}
    assert label_names <= {"state", "provider", "stage", "reason", "channel", "outcome", "route", "method", "status", "le"}


async def test_failures_are_counted_by_a_closed_set_of_reasons(served):
    runtime, _, port = await served(VPN_DRYRUN_FAIL_STEP="creating server")
    before = await scrape(port)
    assert {labels for (name, labels) in samples(before) if name == "vpn_session_failures_total"} >= {
        frozenset({("reason", r)}) for r in ("provider", "timeout", "delivery", "interrupted", "internal")
    }
    await runtime.dispatcher.handle(incoming("/vpn start"))
    await runtime.runner.wait_idle()
    after = await scrape(port)
    assert value(after, "vpn_session_failures_total", reason="provider") == value(before, "vpn_session_failures_total", reason="provider") + 1
    assert value(after, "vpn_sessions", state="requested", provider="dryrun") == 0


async def test_reconcile_deletions_are_counted(served, clock):
    runtime, _, port = await served()
    before = await scrape(port)

    async def quiet(text):
        pass

    # A server no session owns (a lost store, a crash between create and save): reconcile removes it.
    await runtime.provider.create(ServerSpec("0123456789", "test:ghost", "local", clock() + timedelta(minutes=5), "A" * 43 + "=", None), quiet)
    assert await runtime.service.reconcile() == 1
    after = await scrape(port)
    assert value(after, "vpn_reconcile_deleted_total", provider="dryrun") == value(before, "vpn_reconcile_deleted_total", provider="dryrun") + 1


def test_metrics_port_is_never_the_bot_port():
    with pytest.raises(SettingsError, match="VPN_METRICS_PORT"):
        Settings.from_env({"PORT": "8080", "VPN_METRICS_PORT": "8080"})
    assert Settings.from_env({}).ops.metrics_port == 9464
    assert Settings.from_env({"VPN_METRICS_PORT": "0"}).ops.metrics_port == 0


async def test_serve_exposes_metrics_and_readiness_on_their_ports(tmp_path):
    port, metrics_port = free_port(), free_port()
    env = app_env(tmp_path / "data", PORT=str(port), VPN_METRICS_PORT=str(metrics_port))
    proc = subprocess.Popen([sys.executable, APP, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:  # 503 while the store is still opening (listen first)
                            assert (await resp.json()) == {"status": "ready"}
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "serve did not come up"
                await asyncio.sleep(0.1)
        text = await scrape(metrics_port)
        assert value(text, "vpn_store_up") == 1
        assert value(text, "vpn_http_request_seconds_count", route="/readyz", method="GET", status="200") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in err


async def test_http_latency_is_labelled_by_route_template_never_the_path(make_runtime):
    """A path can hold a secret (GroupMe's callback, claim tokens): only the template is a label."""
    port = free_port()
    runtime = make_runtime(VPN_METRICS_PORT=port)

    def hook(app: web.Application) -> None:
        async def callback(request: web.Request) -> web.Response:
            return web.Response(status=204)

        app.router.add_post("/api/groupme/{secret}", callback)

    app = build_http_app(runtime)
    hook(app)
    runner, base = await serve_on_loopback(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/groupme/s3cr3t-callback-path-value", data=b"{}") as resp:
                assert resp.status == 204
            async with http.request("BREW", f"{base}/coffee") as resp:  # a made-up method is folded, not a label
                assert 400 <= resp.status < 500
        text = await scrape(port)
    finally:
        await runner.cleanup()
    assert "s3cr3t" not in text and "BREW" not in text and "coffee" not in text
    assert value(text, "vpn_http_request_seconds_count", route="/api/groupme/{secret}", method="POST", status="204") == 1


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port`, from the kernel's own table (no traffic)."""
    import ipaddress
    import socket
    import struct

    found = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(str(ipaddress.IPv4Address(socket.ntohl(struct.unpack("<I", struct.pack("<I", int(address, 16)))[0]))))
    return found


@pytest.mark.parametrize("env, bound", [
    ({"HOST": "0.0.0.0"}, "127.0.0.1"),  # /metrics is unauthenticated: never bound like HOST
    ({"HOST": "0.0.0.0", "VPN_METRICS_HOST": "0.0.0.0"}, "0.0.0.0"),  # Container Apps' internal port mapping
    ({"HOST": "0.0.0.0", "VPN_METRICS_HOST": "0.0.0.0", "VPN_DEV_MODE": "1"}, "127.0.0.1"),
])
async def test_metrics_bind_loopback_unless_told_otherwise(make_runtime, env, bound):
    from bot.http import metrics

    port = free_port()
    runtime = make_runtime(VPN_METRICS_PORT=port, **env)
    async with runtime, metrics.serving(runtime.store, runtime.provider.name, runtime.settings.ops.metrics_listen_host, port) as serving_port:
        assert serving_port == port
        assert _listening(port) == {bound}
        assert value(await scrape(port), "vpn_store_up") == 1


def test_metrics_host_defaults_to_loopback():
    assert Settings.from_env({"HOST": "0.0.0.0"}).ops.metrics_host == "127.0.0.1"
    assert Settings.from_env({"VPN_METRICS_HOST": "0.0.0.0"}).ops.metrics_host == "0.0.0.0"


async def test_store_gauges_are_read_once_per_interval_however_often_anyone_scrapes(make_runtime, monkeypatch):
    import time
    from types import SimpleNamespace

    from bot.http import metrics

    monkeypatch.setattr(metrics, "STORE_GAUGES_SECONDS", 1.0)
    clock = [1000.0]  # the gauges' clock, moved by hand: a loaded machine cannot make the test late
    monkeypatch.setattr(metrics, "time", SimpleNamespace(monotonic=lambda: clock[0], perf_counter=time.perf_counter))
    port = free_port()
    runtime = make_runtime(VPN_METRICS_PORT=port, VPN_DRYRUN_STEP_SECONDS=0)
    async with runtime, metrics.serving(runtime.store, runtime.provider.name, runtime.settings.ops.metrics_listen_host, port):
        reads = 0
        real = runtime.store.live_counts

        async def counted(*args, **kwargs):
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.05)  # a store round trip: concurrent scrapes overlap it
            return await real(*args, **kwargs)

        monkeypatch.setattr(runtime.store, "live_counts", counted)
        texts = await asyncio.gather(*(scrape(port) for _ in range(20)))
        texts += [await scrape(port) for _ in range(5)]
        assert reads == 1 and all(value(t, "vpn_store_up") == 1 for t in texts)
        await runtime.dispatcher.handle(incoming("/vpn start"))
        await runtime.runner.wait_idle()
        assert value(await scrape(port), "vpn_sessions", state="ready", provider="dryrun") == 0  # still the cached read
        clock[0] += 1.05
        assert value(await scrape(port), "vpn_sessions", state="ready", provider="dryrun") == 1  # a few seconds later: fresh
        assert reads == 2
