"""An Azure VM reports its tunnel's traffic every minute (issue 23): the boot config's own report script,
taken from what the fake ARM received as customData, runs against a second replica's HTTP app; the
figures land in the shared store by compare-and-set and /vpn status shows them. With wireguard-tools
the script reads `wg show dump`; without (Ubuntu's image), the interface's counters."""
from __future__ import annotations

import asyncio
import shutil
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import yaml
from aiohttp.test_utils import TestServer

from bot.store.model import SessionState
from bot.wiring import build_http_app
from provisioner import bootconfig
from tests.provisioner.test_azure import _free_port, azure, customdata_of, settle
from tests.support.factories import incoming

HANDSHAKE = 1_796_000_000  # 2026-11-30T00:53:20Z: the latest handshake the server saw (before the test clock's now)
# What `wg show <if> dump` prints: the interface line (its private key: never printed by the script), then a peer.
DUMP = ("wgs\tPRIVATE-KEY-NEVER-SENT=\tpublic=\t51820\toff\n"
        f"peerkey=\tPSK-NEVER-SENT=\t10.99.0.2:41000\t10.77.0.2/32\t{HANDSHAKE}\t3100000\t12400000\t25\n")


async def run_report(script: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec("/bin/bash", str(script), env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode()


def tools(folder: Path, *names: str) -> Path:
    """A PATH of only these tools (so `command -v wg` finds what the test wants)."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).symlink_to(shutil.which(name))
    return folder


async def test_the_vms_report_reaches_any_replica_and_shows_in_status(channel, make_runtime, clock, tmp_path):
    from tests.fakes.arm import FakeArm

    clock.now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    arm = await FakeArm(boot_seconds=0.1).start()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    other = build_http_app(make_runtime(provider=azure(arm)))  # the replica the VM's reports reach
    server = TestServer(other, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        async with make_runtime(provider=azure(arm), VPN_PUBLIC_URL=base) as rt:
            await rt.dispatcher.handle(incoming("/vpn start"))
            await settle(rt)
            (s,) = await rt.store.sessions([SessionState.READY])
            doc = yaml.safe_load(customdata_of(arm))
            files = {f["path"]: f for f in doc["write_files"]}
            assert {bootconfig.TRAFFIC_REPORT, bootconfig.TRAFFIC_SERVICE, bootconfig.TRAFFIC_TIMER} <= set(files)
            assert files[bootconfig.TRAFFIC_REPORT]["permissions"] == "0700"
            assert "OnUnitActiveSec=60" in files[bootconfig.TRAFFIC_TIMER]["content"]
            script = tmp_path / "traffic-report"
            script.write_text(files[bootconfig.TRAFFIC_REPORT]["content"])
            callback = tmp_path / "callback-url"
            callback.write_text(files[bootconfig.CALLBACK_FILE]["content"])

            # With wireguard-tools: a `wg` that prints the dump (and records that it was asked for one).
            bin_dir = tools(tmp_path / "bin", "awk", "curl", "cat", "date")
            (bin_dir / "wg").write_text(f"#!/bin/bash\n[ \"$*\" = 'show wgs dump' ] || exit 3\nprintf '%s' '{DUMP}'\n")
            (bin_dir / "wg").chmod(0o755)
            env = {"PATH": str(bin_dir), "VPN_WG_IF": "wgs", "VPN_CALLBACK_FILE": str(callback), "VPN_TRAFFIC_STATE": str(tmp_path / "state")}
            code, out = await run_report(script, env)
            assert code == 0, out
            got = await rt.store.get(s.id)
            assert (got.handshake_at, got.bytes_in, got.bytes_out) == (datetime.fromtimestamp(HANDSHAKE, timezone.utc), 12_400_000, 3_100_000)
            clock.now = datetime.fromtimestamp(HANDSHAKE + 20, timezone.utc)
            channel.sent.clear()
            await rt.dispatcher.handle(incoming("/vpn status"))
            assert "connected — handshake 20 s ago, ↓ 12.4 MB ↑ 3.1 MB" in channel.all_text()

            # Without wireguard-tools: the interface's counters (loopback here), "a handshake" when received bytes moved.
            bare = tools(tmp_path / "bare", "awk", "curl", "cat", "date")
            env = {**env, "PATH": str(bare), "VPN_WG_IF": "lo"}
            code, out = await run_report(script, env)
            assert code == 0, out
            got = await rt.store.get(s.id)
            rx = int(Path("/sys/class/net/lo/statistics/rx_bytes").read_text())
            assert got.bytes_out > 0 and got.bytes_out <= rx  # lo's received bytes stand for the user's upload
            assert got.handshake_at >= datetime.fromtimestamp(HANDSHAKE, timezone.utc)

            # The same URL refuses what is not a report, and anything once the session ended.
            url = callback.read_text().strip()
            async with aiohttp.ClientSession() as http:
                for body in (b'{"handshake": -1, "rx": 0, "tx": 0}', b"[1, 2]", b'{"rx": 1}', b"x" * 2000, b'{"handshake": true, "rx": 0, "tx": 0}'):
                    async with http.post(url, data=body) as resp:
                        assert resp.status == 400, body
                async with http.post(url.rsplit("/", 1)[0] + "/" + "A" * 43, data=b'{"handshake": 0, "rx": 0, "tx": 0}') as forged:
                    assert forged.status == 404
                await rt.dispatcher.handle(incoming("/vpn stop"))
                await settle(rt)
                async with http.post(url, data=b'{"handshake": 0, "rx": 1, "tx": 1}') as late:
                    assert late.status == 404
            assert "PRIVATE-KEY" not in out and "PSK" not in out
    finally:
        await server.close()
        await arm.stop()
