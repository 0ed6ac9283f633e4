"""One way to run the app and a quiet scheduler run (issue 21 items 3, 4, 9, 10, 11).

`vpn-bot <command>` (pyproject's console script, installed into .venv by scripts/venv.sh) is the
entry point; `python3 app.py` with a Python that lacks the packages says so in one line; a user
without root or sudo is told what an administrator must install before any apt output; `--help`
lists what a first-time admin looks for; an unknown setting is a one-line warning; `reap` prints one
line of what it did.
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.support.apprun import APP, app_env, console

ROOT = Path(__file__).resolve().parents[2]


def run_app(env: dict, *args: str, input: str = "", cwd=None, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *python, APP, *args], env=env, input=input, capture_output=True, text=True, timeout=60, cwd=cwd)


# ----- 3: one entry point -----------------------------------------------------------------------------------

def test_python3_app_py_without_the_packages_says_what_to_run_in_one_line(tmp_path):
    """`-S`: no site-packages, as the system `python3` of a fresh Debian has none of ours."""
    env = {k: v for k, v in app_env(tmp_path / "data").items() if k != "PYTHONPATH"}
    result = run_app(env, "console", python=("-S",))
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "./scripts/try" in result.stderr and ".venv/bin/vpn-bot" in result.stderr and "aiohttp" in result.stderr


def test_vpn_bot_is_the_console_script_and_scripts_try_runs_it(tmp_path):
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^vpn-bot = "app:main"$', pyproject, re.M)
    # What pip's generated .venv/bin/vpn-bot does: import app's main and call it.
    stub = "import sys; from app import main; sys.argv[0] = 'vpn-bot'; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", stub, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: vpn-bot "), result.stderr
    try_script = (ROOT / "scripts" / "try").read_text()
    assert re.search(r'^exec \.venv/bin/vpn-bot "\$\{@:-console\}"$', try_script, re.M)
    venv = (ROOT / "scripts" / "venv.sh").read_text()
    assert "--no-deps -e ." in venv and "sha256sum pyproject.toml" in venv  # installed once per pyproject change


def test_no_message_in_the_code_says_python_app_py():
    hits = []
    for path in [ROOT / "app.py", *(ROOT / "bot").rglob("*.py"), *(ROOT / "provisioner").rglob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"python3? app\.py", line):
                hits.append(f"{path.relative_to(ROOT)}:{number}")
    assert hits == []


# ----- 4: non-root without sudo ---------------------------------------------------------------------------

def _sandbox(tmp_path: Path, scripts: tuple[str, ...], *, uid: int, tools: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A copy of `scripts` in a fresh folder, and a PATH holding only the basic tools plus fakes
    (`id` answering `uid`, an `apt-get` that records being called, a `python3` whose venv fails)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in scripts:
        shutil.copy(ROOT / "scripts" / name, repo / "scripts" / name)
    for name in ("requirements.txt", "requirements-dev.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "cut", "sha256sum", "basename", "dirname", "rm", "mkdir"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    fakes = {
        "id": f'#!/bin/sh\necho {uid}\n',
        "apt-get": f'#!/bin/sh\necho "APT OUTPUT $*" >&2\necho called >> "{tmp_path}/apt-called"\nexit 100\n',
        **tools,
    }
    for name, body in fakes.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return repo, {"PATH": str(bin_dir), "HOME": str(tmp_path)}


FAILING_VENV = """#!/bin/sh
case "$*" in
  *print*) echo 3.11 ;;
  *"-m venv"*) echo "The virtual environment was not created successfully because ensurepip is not available." >&2; exit 1 ;;
  *) exit 0 ;;
esac
"""


def test_scripts_try_without_root_or_sudo_says_what_an_admin_must_install(tmp_path):
    repo, env = _sandbox(tmp_path, ("try", "venv.sh"), uid=1000, tools={"python3": FAILING_VENV})
    result = subprocess.run([shutil.which("bash"), str(repo / "scripts" / "try")], env=env, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "venv: 'python3 -m venv' does not work here; an administrator must install, then run this again:",
        "venv:   python3.11-venv (Debian/Ubuntu: apt-get install python3.11-venv; elsewhere your distribution's venv package)",
    ]
    assert not (tmp_path / "apt-called").exists()


def test_scripts_try_as_root_says_what_it_installs_before_any_apt_output(tmp_path):
    repo, env = _sandbox(tmp_path, ("try", "venv.sh"), uid=0, tools={"python3": FAILING_VENV})
    result = subprocess.run([shutil.which("bash"), str(repo / "scripts" / "try")], env=env, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert lines[0] == "venv: installing python3.11-venv with apt-get, for 'python3 -m venv'" and lines[1].startswith("APT OUTPUT")


def test_install_test_deps_without_root_or_sudo_lists_each_package_and_runs_no_apt(tmp_path):
    repo, env = _sandbox(tmp_path, ("install-test-deps.sh", "venv.sh"), uid=1000, tools={})
    result = subprocess.run([shutil.which("bash"), str(repo / "scripts" / "install-test-deps.sh")], env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    import glob

    libatomic = [] if glob.glob("/usr/lib/*/libatomic.so.1") or glob.glob("/lib/*/libatomic.so.1") or glob.glob("/usr/lib*/libatomic.so.1") else ["libatomic1"]
    assert result.stderr.splitlines() == [
        "install-test-deps: not root and no sudo here; an administrator must install, then run this again:",
        *(f"install-test-deps:   apt-get install -y --no-install-recommends {p}"
          for p in ("wireguard-go", "wireguard-tools", "iproute2", "chromium", "npm", "nftables", *libatomic)),
        "install-test-deps:   npm install -g azurite@3.37.0",
    ]
    assert not (tmp_path / "apt-called").exists()


# ----- 9: --help --------------------------------------------------------------------------------------------

def test_help_lists_local_rules_and_the_web_metrics_and_log_settings():
    result = subprocess.run([sys.executable, APP, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: vpn-bot ")
    for word in ("local:<email>", "vpn-bot users add", "VPN_LOCAL_AUTH_SECRET", "VPN_ENTRA_TENANT_ID", "VPN_CORS_ORIGINS",
                 "VPN_METRICS_PORT", "VPN_LOG_LEVEL", "VPN_LOG_FORMAT", "VPN_PUBLIC_URL", "VPN_STORE"):
        assert word in result.stdout, word


# ----- 10: unknown names ------------------------------------------------------------------------------------

def test_a_misspelled_setting_in_env_is_a_one_line_warning(tmp_path):
    (tmp_path / ".env").write_text("VPN_SESION_MINUTES=7\nAZURE_CLIENT_ID=00000000-0000-0000-0000-000000000001\nAWS_REGION=eu-west-1\n")
    env = app_env(tmp_path / "data")
    env.pop("VPN_ENV_FILE")  # ./.env of the working directory
    result = run_app(env, "console", input="/vpn help\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "VPN_SESION_MINUTES is not a setting this version reads (did you mean VPN_SESSION_MINUTES?); it is ignored")


# ----- 11: reap for cron ------------------------------------------------------------------------------------

def test_reap_prints_one_line_of_what_it_did_and_nothing_else(tmp_path):
    env = app_env(tmp_path / "data", VPN_SESSION_MINUTES="5")
    assert console(["/vpn start"], env).returncode == 0  # a console session, left running in the store
    quiet = run_app(env, "reap")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout == "reap: 0 session(s) ended, 0 warned, 0 orphaned resource(s) removed\n"
    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")  # the store is the clock reap reads: end it now
    ended = datetime.now(UTC).isoformat()  # its end, and when the sweep is to look (the due index)
    assert db.execute("UPDATE sessions SET expires_at=?, due_at=?", (ended, ended)).rowcount == 1
    db.commit()
    db.close()
    reaped = run_app(env, "reap")
    # No "Teams is off", no "web page … off", no "no 'console' channel in this process": nothing an admin must act on.
    assert reaped.returncode == 0 and reaped.stderr == "", reaped.stderr
    assert reaped.stdout == "reap: 1 session(s) ended, 0 warned, 0 orphaned resource(s) removed\n"


def test_reap_shows_everything_at_debug(tmp_path):
    result = run_app(app_env(tmp_path / "data", VPN_LOG_LEVEL="DEBUG"), "reap")
    assert result.returncode == 0 and result.stdout.startswith("reap: ") and " DEBUG " in result.stderr


def test_serve_settles_the_heap_frozen_and_with_a_larger_young_generation():
    """app.settle_heap (what `serve` runs once listening): what is loaded is frozen, and the young
    generation is collected every GC_YOUNG allocations. In a child: the collector is per process."""
    code = ("import gc, app; before = gc.get_threshold(); app.settle_heap(); "
            "print(gc.get_freeze_count() > 10000, gc.get_threshold()[0] == app.GC_YOUNG, gc.get_threshold()[1:] == before[1:])")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(APP).parent, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"], out.stderr[-2000:]
