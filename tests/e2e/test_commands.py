"""The first hour of a new user: .env, one-line errors, the container health check, file modes (issue 12)."""
from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.channels.teams.manifest import problems
from bot.settings import Settings, SettingsError, read_env_file
from tests.fakes.netns import bare_namespace
from tests.support.apprun import APP, app_env, console

ROOT = Path(__file__).resolve().parents[2]
APP_ID = "11111111-2222-3333-4444-555555555555"


def run_app(env: dict, *args: str, input: str = "", cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, APP, *args], env=env, input=input, capture_output=True, text=True, timeout=60, cwd=cwd)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    return lines[0]


# --- .env ---------------------------------------------------------------------------------------

def test_env_file_is_read_and_the_real_environment_wins(tmp_path):
    (tmp_path / ".env").write_text(
        "# a comment\nVPN_SESSION_MINUTES=7\nexport VPN_USERS='console:kim'\nVPN_WARN_MINUTES=2\n\nVPN_DRYRUN_REGIONS=\"here, there\"\n"
    )
    env = app_env(tmp_path / "data", VPN_WARN_MINUTES="3")
    env.pop("VPN_ENV_FILE")  # the default: ./.env of the working directory
    result = run_app(env, "console", input="/vpn start there\n/vpn status\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "in there for 7 min" in result.stdout  # from .env
    values = read_env_file(tmp_path / ".env")
    assert values["VPN_USERS"] == "console:kim" and values["VPN_DRYRUN_REGIONS"] == "here, there"
    settings = Settings.from_env({**values, "VPN_WARN_MINUTES": "3"})
    assert settings.sessions.warn_minutes == 3 and settings.sessions.session_minutes == 7


def test_a_broken_env_file_is_one_line_naming_the_line_not_its_content(tmp_path):
    (tmp_path / ".env").write_text("VPN_SESSION_MINUTES=7\nsecret-pasted-here\n")
    with pytest.raises(SettingsError, match=r"\.env line 2: expected NAME=value$"):
        read_env_file(tmp_path / ".env")
    assert read_env_file(tmp_path / "missing") == {}


def test_env_example_has_no_container_specific_values():
    active = {m.group(1) for m in re.finditer(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M)}
    assert "HOST" not in active and "VPN_DATA_DIR" not in active  # would override the image's 0.0.0.0 and /data


def test_an_unwritable_data_dir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_app(app_env(tmp_path / "file" / "data"), "console")
    assert result.returncode == 1
    assert one_line(result).startswith(f"error: VPN_DATA_DIR {tmp_path / 'file' / 'data'}: cannot write there")


# --- one-line errors ------------------------------------------------------------------------------

def test_serve_on_a_busy_port_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_app(app_env(tmp_path / "data", PORT=str(port), VPN_LOG_LEVEL="WARNING"), "serve")
    assert result.returncode == 1
    assert one_line(result) == f"error: 127.0.0.1:{port} is already in use (another serve?): stop it or set PORT"


def test_an_unwritable_out_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_app(app_env(tmp_path / "data"), "console", "--out", str(tmp_path / "file" / "out"), input="/vpn start\n")
    assert result.returncode == 1
    assert one_line(result).startswith(f"error: --out {tmp_path / 'file' / 'out'}: cannot write there")


def test_an_unreachable_azure_endpoint_is_one_line_before_any_credential(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connection refused
        env = app_env(tmp_path / "data", VPN_PROVIDER="azure", AZURE_SUBSCRIPTION_ID="s", AZURE_RESOURCE_GROUP="g",
                      AZURE_ARM_ENDPOINT=f"http://127.0.0.1:{port}", VPN_LOG_LEVEL="WARNING")
        env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
        result = run_app(env, "reap")
    assert result.returncode == 1
    assert one_line(result) == f"error: AZURE_ARM_ENDPOINT=http://127.0.0.1:{port} is unreachable (Connection refused): check the network, proxy or the endpoint"


def test_help_lists_the_environment_and_points_to_the_readme():
    result = subprocess.run([sys.executable, APP, "--help"], capture_output=True, text=True)
    for word in ("host-setup", "VPN_PROVIDER", "VPN_USERS", "WG_INTERFACE", "MicrosoftAppId", ".env", "README.md"):
        assert word in result.stdout


# --- teams-manifest ------------------------------------------------------------------------------

@pytest.mark.parametrize("app_id, website, name, version, expect", [
    (APP_ID, "https://vpn.example.org", "VPN Bot", "1.0.0", []),
    ("x", "https://vpn.example.org", "VPN Bot", "1.0.0", ["app id 'x' is not a GUID"]),
    (APP_ID, "http://vpn.example.org", "VPN Bot", "1.0.0", ["is not an https:// URL"]),
    (APP_ID, "https://vpn.example.org", "", "1.0.0", ["must be 1 to 30 characters"]),
    (APP_ID, "https://vpn.example.org", "VPN Bot", "banana", ["'banana' is not MAJOR.MINOR.PATCH"]),
    (APP_ID, "https://vpn.example.org", "VPN Bot", "1.02.0", ["is not MAJOR.MINOR.PATCH"]),
    ("", "", "n" * 31, "1.0", ["no app id", "no website", "1 to 30", "MAJOR.MINOR.PATCH"]),
])
def test_manifest_problems_are_all_found_at_once(app_id, website, name, version, expect):
    found = problems(app_id, website=website, name=name, version=version)
    assert len(found) == len(expect)
    for text, needle in zip(found, expect):
        assert needle in text


def test_manifest_command_needs_no_secret_and_lists_every_problem(tmp_path):
    env = app_env(tmp_path / "data", MicrosoftAppId="x")
    bad = run_app(env, "teams-manifest", "--version", "banana", "--out", str(tmp_path / "a.zip"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'x' is not a GUID" in bad.stderr and "no website" in bad.stderr and "'banana'" in bad.stderr
    assert not (tmp_path / "a.zip").exists()
    env = app_env(tmp_path / "data", MicrosoftAppId=APP_ID)  # no password, no tenant: a zip needs neither
    good = run_app(env, "teams-manifest", "--website", "https://vpn.example.org", "--out", str(tmp_path / "a.zip"))
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "a.zip").stat().st_size > 500
    unwritable = run_app(env, "teams-manifest", "--website", "https://vpn.example.org", "--out", str(tmp_path / "no" / "a.zip"))
    assert unwritable.returncode == 2 and one_line(unwritable).startswith("teams-manifest: cannot write")


# --- files ---------------------------------------------------------------------------------------

def test_store_wal_and_shm_files_are_private(tmp_path):
    assert console(["/vpn start", "/vpn status"], app_env(tmp_path / "data")).returncode == 0
    from bot.store.sqlite import SqliteStore

    async def touch():  # a second process opening the same store, as serve and reap do
        store = SqliteStore(tmp_path / "data" / "vpn-bot.sqlite3")
        await store.open()
        names = sorted(p.name for p in (tmp_path / "data").iterdir())
        await store.close()
        return names

    names = asyncio.run(touch())
    assert "vpn-bot.sqlite3-wal" in names and "vpn-bot.sqlite3-shm" in names
    for name in ("vpn-bot.sqlite3", "vpn-bot.sqlite3-wal", "vpn-bot.sqlite3-shm"):
        path = tmp_path / "data" / name
        if path.exists():
            assert oct(path.stat().st_mode & 0o777) == "0o600", name


def test_no_tool_output_is_committed_and_tool_folders_are_ignored():
    tracked = shutil.which("git") and subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    if not tracked:
        pytest.skip("not a git checkout")
    assert not [f for f in tracked if f.endswith(".log") or f.startswith(("devTools/", ".venv/", "venv/", "out/", "data/"))]
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {".venv/", "venv/", "/out/", "/data/"} <= set(ignored)


# --- the container health check -------------------------------------------------------------------

def healthcheck_command(workdir: Path) -> str:
    """The Dockerfile's HEALTHCHECK command, with the files its COPY lines put in the image's WORKDIR."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    command = re.search(r"^HEALTHCHECK .*? CMD (.+)$", text, re.M).group(1).strip()
    for src, dest in re.findall(r"^COPY (scripts/\S+) (\S+)$", text, re.M):
        shutil.copy(ROOT / src, workdir / (Path(src).name if dest.endswith("/") else dest))
    return re.sub(r"^python ", f"{sys.executable} ", command)


@pytest.mark.netns
def test_health_check_fails_for_a_loopback_only_bind_and_passes_when_reachable(tmp_path):
    workdir = tmp_path / "app"
    workdir.mkdir()
    command = healthcheck_command(workdir)
    with bare_namespace("10.98.0.1") as ns:
        for host, healthy in (("127.0.0.1", False), ("0.0.0.0", True)):
            env = app_env(tmp_path / f"data-{host}", HOST=host, PORT="3978", VPN_LOG_LEVEL="WARNING")
            serve = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, APP, "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3978/healthz', timeout=1)"
                deadline = time.monotonic() + 20
                while subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], env=env, capture_output=True).returncode:
                    assert time.monotonic() < deadline and serve.poll() is None, serve.stderr.read() if serve.poll() is not None else "serve did not come up"
                    time.sleep(0.2)
                check = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", command], env=env, cwd=workdir, capture_output=True, text=True, timeout=30)
                assert (check.returncode == 0) is healthy, check.stderr
                if not healthy:
                    assert "10.98.0.1:3978" in check.stderr and "HOST=127.0.0.1 binds loopback only" in check.stderr
            finally:
                serve.terminate()
                serve.wait(timeout=15)
