"""Issue 25 goal 6 in its short form: the failover soak of bench/bench_soak.py (the long form is that
benchmark's default run), with the same driver, run as its own process as tests/test_bench.py runs
every benchmark (bench/ is no package, and tests import nothing from it).

Three real `app.py serve` replicas on one Azurite store and one dryrun "cloud", 3 web starts a second
for 45 s with stops and extends mixed in, one replica SIGKILLed (aimed: right after it accepted a start
or a stop) and started again every 15 s until everything has settled. The driver's report must show
work taken over, and not one duplicated config, lost session or stop, orphaned dryrun server, untrue
or missing notice (beyond those that died with a killed replica), or error in a replica's log.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "bench" / "bench_soak.py"
SHORT_FORM = ["--seconds", "45", "--rate", "3", "--kill-every", "15", "--expire-grace", "25"]
TIME_LIMIT = 420  # seconds; the run takes about 75 (its report says how long)


def run_soak(tmp_path: Path) -> tuple[int, dict, str]:
    report, out = tmp_path / "report.json", tmp_path / "soak.out"
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, str(SOAK), *SHORT_FORM, "--json", str(report), "--logs", str(tmp_path / "logs")],
                                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:
            proc.wait(TIME_LIMIT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the soak stops its replicas and Azurite on the way out
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            pytest.fail(f"the soak took longer than {TIME_LIMIT} s:\n{out.read_text()[-5000:]}")
    return proc.returncode, json.loads(report.read_text()) if report.exists() else {}, out.read_text()


@pytest.mark.slow
def test_replicas_killed_under_load_lose_nothing_and_tell_the_truth(tmp_path):
    if shutil.which("azurite-table") is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("azurite-table is not installed (scripts/install-test-deps.sh)")
    code, r, printed = run_soak(tmp_path)
    print("\n" + printed)
    assert code == 0 and r, printed[-5000:]
    detail = "\n".join([*r["problems"][:40], *r["replica_error_lines"][:20], printed[-3000:]])

    assert r["counts"] == {"duplicated": 0, "lost": 0, "orphaned": 0, "untruthful": 0, "untold": 0, "driver": 0}, detail
    assert r["replica_errors"] == 0, detail
    # The soak did what it says: enough sessions, every replica killed, every ending met, work taken over.
    assert r["sessions"] >= 100, detail
    assert {k["replica"] for k in r["kills"]} == {"a", "b", "c"} and len(r["kills"]) >= 3, r["kills"]
    assert r["outcomes"].get("stopped", 0) >= 20 and r["outcomes"].get("expired", 0) >= 1 and r["extends"] >= 5, (r["outcomes"], r["extends"])
    assert r["takeovers"]["provisioning"] + r["takeovers"]["teardown"] >= 1, (r["takeovers"], r["kills"])
    assert r["config_seconds"]["n"] >= r["sessions"] - r["outcomes"].get("failed", 0) - r["configs_lost_in_flight"], r["config_seconds"]
