"""Real `serve` replicas on one Azurite store, the `host` provider on a wireguard-go interface.

The driver (tests/support/replica_driver.py) runs inside the lab's server namespace, so the replicas, Azurite
and the fake Bot Connector all listen on that namespace's loopback. Printed with -s: the counts.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.netns import POOL, SERVER_LAN

pytestmark = [pytest.mark.netns, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def drive(lab, tmp_path: Path, **spec) -> dict:
    spec = {"work": str(tmp_path), "interface": lab.server_if, "endpoint": SERVER_LAN, "pool": POOL, **spec}
    out = subprocess.run(
        lab.in_server(sys.executable, "-m", "tests.support.replica_driver", json.dumps(spec)), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    return report


def test_two_replicas_one_killed_mid_provisioning(lab, tmp_path):
    n = 40
    r = drive(lab, tmp_path, mode="kill", users=n, lease=4, kill_after=0.3)
    assert r["start_http"] == {"201": n} or sum(r["start_http"].values()) == n
    assert r["in_flight_of_killed"] > 0, "the kill must catch the replica mid-provisioning"
    ready, failed = r["states"].get("ready", 0), r["states"].get("failed", 0)
    assert ready + failed == n
    assert r["ready_distinct_addresses"] == ready and r["ready_with_peer_at_its_address"] == ready
    assert r["peers_on_interface"] == ready
    assert r["failed_and_told"] == failed
    assert r["acks_per_user"] == {"1": n}  # no message answered twice (nor lost)
    assert set(r["states_after_stop"]) <= {"deleted", "failed"} and r["states_after_stop"].get("deleted", 0) == ready
    assert r["peers_after_stop"] == 0
    assert r["ended_notices_per_user"] == {"1": n}  # told once, by whichever replica ended it


def test_scale_to_zero_reap_alone_ends_everything(lab, tmp_path):
    n = 8
    r = drive(lab, tmp_path, mode="zero", users=n, lease=4)
    assert r["ready_before_stop"] == n
    assert r["reap_returncode"] == 0 and not r["reap_traceback"]
    assert r["states_after_reap"].get("deleted") == n and sum(r["states_after_reap"].values()) == n + 1
    assert r["states_after_reap"].get("failed", 0) + r["states_after_reap"].get("deleted") == n + 1  # the one caught mid-way
    assert r["peers_after_reap"] == 0
    assert r["reap_notices_per_user"] == {"1": n + 1}  # everyone told once, by reap alone
