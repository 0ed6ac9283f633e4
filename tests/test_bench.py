"""bench/ stands on its own (issue 17.7): it imports nothing from tests/ (it runs the fakes as their own
processes and reaches them over HTTP), and every benchmark still runs, in its smallest mode."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "bench").glob("*.py"))

# The smallest run of each benchmark (a few seconds each), and a line its report always has.
SMALLEST = {
    "bench_azure.py": (["--runs", "1", "--scale", "0.01", "--retry-after", "0"], "old design"),
    "bench_azure_exec.py": (["--runs", "1", "--bytecode", "none", "--ip", "0.1", "--nic", "0.1", "--vm", "0.3", "--boot", "0.2", "--retry-after", "1"],
                            "from exec of the console"),
    "bench_aws.py": (["--runs", "1", "--scale", "0.01", "--cases", "warm"], "server up:"),
    "bench_chat.py": (["--rounds", "1", "--window", "4", "--help-seconds", "0.5", "--start-rate", "4", "--start-seconds", "0.5", "--drain", "5"],
                      "project/floor"),
    "bench_coldstart.py": (["--runs", "1", "--arm-latency", "0", "--live", "0,20"], "goal: the Teams reply within 1.5 s of exec"),
    "bench_isolation.py": (["--rate", "4", "--seconds", "1", "--settle", "10"], "GroupMe acks: n="),
    "bench_sessions.py": (["--sessions", "5"], "expiry: 5 sessions torn down"),
    "bench_soak.py": (["--seconds", "4", "--rate", "2", "--kill-every", "4", "--expire-grace", "0"], "duplicated configs: "),
    "bench_start.py": (["--sessions", "2"], "all 2 delivered"),
    "bench_store.py": (["--ops", "5", "--sessions", "5"], "warned after that sweep: sqlite=5, azure-tables (Azurite)=5"),
    "bench_web.py": (["--sessions", "1", "--polls", "5", "--bad", "5"], "invalid bearer token -> 401"),
    "bench_groupme_chatter.py": (["--requests", "20", "--rounds", "1", "--skip-server"], "cheapest honest design"),
    "bench_logins.py": (["--flood", "10", "--scenarios", "one", "--others", "1"], "the other user's logins meanwhile"),
    "bench_store_open.py": ([], "reap, tables present"),
    "bench_usage.py": (["--rows", "200", "--runs", "1"], "month 2026-11, everyone"),
    "bench_partitions.py": (["--starts", "5"], "the next pass, nothing due"),
    "bench_scale.py": (["--sessions", "30", "--levels", "10", "--k", "3", "--passes", "2", "--settle", "0.5", "--idle", "1", "--wave-delay", "3",
                        "--wave-spread", "1", "--wave-wait", "15", "--sweep-seconds", "1", "--e-sessions", "30", "--e-seconds", "2", "--seed-procs", "1", "--traffic-wait", "0"],
                       "summary (goals of issue 25.1"),
}


def imported(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (also inside functions, and by a literal in __import__ / import_module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr if isinstance(node.func, ast.Attribute) else ""
            if name in ("__import__", "import_module"):
                found.add(node.args[0].value)
    return found


def test_bench_imports_nothing_from_tests():
    assert {p.name for p in SCRIPTS} >= {"common.py", *SMALLEST}
    offenders = sorted(f"{p.name}: {m}" for p in SCRIPTS for m in imported(p) if m == "tests" or m.startswith("tests."))
    assert not offenders, "bench/ must not import tests/ (run the fake as a process: bench/common.py fake_process):\n" + "\n".join(offenders)


def test_every_benchmark_has_a_smoke_run():
    assert {p.name for p in SCRIPTS if p.name.startswith("bench_")} == set(SMALLEST)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_in_its_smallest_mode(script):
    if script in ("bench_store.py", "bench_soak.py", "bench_scale.py") and shutil.which("azurite-table") is None:
        pytest.skip("azurite-table is not installed (scripts/install-test-deps.sh)")
    args, expected = SMALLEST[script]
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expected in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
