"""The console, as a person on a fresh machine uses it: the real app in a subprocess, dryrun provider."""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from tests.support.apprun import APP, LiveConsole, app_env, console
from tests.support.qrtools import decode_qr


def test_start_status_stop(tmp_path):
    env = app_env(tmp_path / "data")
    out = tmp_path / "out"
    t0 = time.monotonic()
    first = console(["/vpn start", "/vpn status"], env, "--out", str(out))
    elapsed = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    stdout = first.stdout
    assert "On it: starting VPN session" in stdout
    for step in ("reserving address", "creating server", "starting WireGuard", "Your VPN is ready"):
        assert step in stdout
    (conf,) = out.glob("vpn-*.conf")
    png = conf.with_suffix(".png")
    assert f"Config: {conf.resolve()}" in stdout and f"QR code: {png.resolve()}" in stdout
    text = conf.read_text()
    assert text.startswith("[Interface]\nPrivateKey = ") and "AllowedIPs = 0.0.0.0/0, ::/0" in text
    assert text in stdout  # printed on the terminal too
    assert "█" in stdout  # and the QR, as text
    assert decode_qr(png.read_bytes()) == text
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert "State      provisioning" in stdout or "State      ready" in stdout
    print(f"\nconsole: start -> config delivered (whole process, dryrun 3 x 0.05 s steps): {elapsed:.2f}s")

    # Sessions live on in the store: a later console sees and stops them.
    second = console(["/vpn status", "/vpn stop", "/vpn status"], env)  # its default ./out is tmp_path/out
    assert second.returncode == 0, second.stderr
    assert not conf.exists() and not png.exists()  # the key in them died with the session
    session_id = re.search(r"vpn-(\w+)\.conf", conf.name).group(1)
    assert f"Session    {session_id}" in second.stdout and "State      ready" in second.stdout
    assert f"Your VPN session {session_id} has ended (stopped by you)" in second.stdout
    assert second.stdout.rstrip().endswith("Use /vpn start for a new one.") or "no VPN session running" in second.stdout

    # No secret in any log or in the store.
    secrets = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(("PrivateKey", "PresharedKey"))]
    for secret in secrets:
        assert secret not in first.stderr and secret not in second.stderr and secret not in second.stdout
        for path in (tmp_path / "data").iterdir():
            assert secret.encode() not in path.read_bytes()


def test_as_another_identity_is_subject_to_the_allowlist(tmp_path):
    env = app_env(tmp_path / "data", VPN_USERS="groupme:123", VPN_ADMINS="")
    stranger = console(["/vpn start"], env, "--as", "groupme:999", "--out", str(tmp_path / "out"))
    assert stranger.returncode == 0
    assert "not allowed to use this VPN bot" in stranger.stdout and "groupme:999" in stranger.stdout
    assert not (tmp_path / "out").exists()
    user = console(["/vpn list", "/vpn start"], env, "--as", "groupme:123", "--out", str(tmp_path / "out"))
    assert "only admins can use /vpn list" in user.stdout
    assert list((tmp_path / "out").glob("*.conf"))
    by_domain = console(["/vpn help"], app_env(tmp_path / "d2", VPN_USERS="domain:example.org"), "--as", "teams:abc", "--email", "kim@example.org")
    assert "/vpn start" in by_domain.stdout and "not allowed" not in by_domain.stdout


def test_local_operator_is_admin_even_with_an_empty_allowlist(tmp_path):
    result = console(["/vpn list", "/vpn help"], app_env(tmp_path / "data"))
    assert "Live VPN sessions" in result.stdout and "0 live session(s)" in result.stdout
    assert "/vpn list — every live session" in result.stdout


def test_bad_input_gets_help_not_a_traceback(tmp_path):
    result = console(["hello", "/vpn bogus", "/vpn start forever and ever", "\x1b[31m/vpn start", "/vpn " + "x" * 5000], app_env(tmp_path / "data"))
    assert result.returncode == 0
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.count("I hand out WireGuard VPN access") == 5


def test_expiry_of_a_running_session_removes_its_files(tmp_path):
    env = app_env(tmp_path / "data", VPN_SESSION_MINUTES="1", VPN_SWEEP_SECONDS="1")
    live = LiveConsole(env, "--out", str(tmp_path / "out"))
    try:
        live.type("/vpn start")
        live.wait_for("Your VPN is ready")
        (conf,) = (tmp_path / "out").glob("*.conf")
        # The store is the clock the sweeper reads: move this session's end to now instead of waiting a minute.
        db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
        now = datetime.now(timezone.utc).isoformat()
        # Its end and when the sweeper is to look (the due time it indexes) are both now.
        assert db.execute("UPDATE sessions SET expires_at=?, due_at=? WHERE state='ready'", (now, now)).rowcount == 1
        db.commit()
        db.close()
        ended = live.wait_for("has ended (time is up)", timeout=15)
        assert "time is up" in ended
        deadline = time.monotonic() + 5
        while conf.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not conf.exists() and not conf.with_suffix(".png").exists()
    finally:
        live.kill()


def test_crash_mid_provisioning_then_restart_resumes(tmp_path):
    env = app_env(tmp_path / "data", VPN_DRYRUN_STEP_SECONDS="2", VPN_LEASE_SECONDS="3")
    live = LiveConsole(env, "--out", str(tmp_path / "first"))
    live.type("/vpn start")
    live.wait_for("creating server")
    log = live.kill()
    assert not (tmp_path / "first").exists()
    time.sleep(3)  # the killed process's lease runs out; only then may another process take the work over
    resumed = console(["/vpn status"], app_env(tmp_path / "data", VPN_LEASE_SECONDS="3"), "--out", str(tmp_path / "second"))
    assert resumed.returncode == 0, resumed.stderr
    assert "restarted while setting up" in resumed.stdout
    (conf,) = (tmp_path / "second").glob("*.conf")
    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
    assert db.execute("SELECT state, attempts FROM sessions").fetchall() == [("ready", 2)]
    servers = (tmp_path / "data" / "dryrun-servers.json").read_text()
    assert servers.count('"session_id"') == 1  # the crashed attempt's server was replaced, not doubled
    assert "Traceback" not in log


def test_reap_tears_down_expired_sessions_without_a_running_bot(tmp_path):
    env = app_env(tmp_path / "data", VPN_SESSION_MINUTES="1")
    assert console(["/vpn start"], env).returncode == 0
    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
    db.execute("UPDATE sessions SET expires_at='2000-01-01T00:00:00+00:00', due_at='2000-01-01T00:00:00+00:00'")  # as if its time had passed
    db.commit()
    reaped = subprocess.run([sys.executable, APP, "reap"], env=env, capture_output=True, text=True, timeout=60)
    assert reaped.returncode == 0, reaped.stderr
    assert db.execute("SELECT state FROM sessions").fetchall() == [("deleted",)]
    assert (tmp_path / "data" / "dryrun-servers.json").read_text().strip() == "{}"


def test_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, APP, "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for word in ("serve", "console", "reap"):
        assert word in result.stdout


def test_bad_setting_stops_with_a_message_naming_it(tmp_path):
    for name, value, expect in [
        ("VPN_SESSION_MINUTES", "0", "VPN_SESSION_MINUTES=0 is out of range"),
        ("VPN_PROVIDER", "gcp", "VPN_PROVIDER='gcp' is not one of: dryrun, host, azure"),
        ("WG_POOL", "10.0.0.0/31", "WG_POOL='10.0.0.0/31' is not valid"),
        ("VPN_USERS", "alice", "VPN_USERS: 'alice' is not kind:value"),
        ("PORT", "http", "PORT='http' is not a whole number"),
    ]:
        env = app_env(tmp_path / "data", **{name: value})
        result = subprocess.run([sys.executable, APP, "console"], env=env, input="", capture_output=True, text=True, timeout=30)
        assert result.returncode == 2
        assert expect in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    env = app_env(tmp_path / "data", VPN_PROVIDER="host")
    result = subprocess.run([sys.executable, APP, "reap"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "WG_ENDPOINT is required" in result.stderr


def test_os_user_is_the_console_identity(tmp_path):
    result = console(["/vpn start"], app_env(tmp_path / "data"), "--out", str(tmp_path / "out"))
    import getpass

    db = sqlite3.connect(tmp_path / "data" / "vpn-bot.sqlite3")
    assert db.execute("SELECT owner FROM sessions").fetchall() == [(f"console:{getpass.getuser()}",)]
    assert list((tmp_path / "out").glob("vpn-*.conf")) and result.returncode == 0  # ./out of its cwd, not of the tree


class PtyConsole:
    """`app.py console` on a pseudo-terminal of 80×24, as a person at a terminal runs it."""

    def __init__(self, tmp_path, *args: str, env: dict[str, str] | None = None) -> None:
        import fcntl
        import pty
        import struct
        import termios

        env = app_env(tmp_path / "data", TERM="xterm", **(env or {}))
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its controlling terminal, so Ctrl-C is a real SIGINT
            os.chdir(tmp_path)
            os.execve(sys.executable, [sys.executable, APP, "console", *args], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.output = b""
        self.mark = 0

    def read_until(self, needle: bytes, timeout: float = 20) -> bool:
        import select

        deadline = time.monotonic() + timeout
        while True:
            found = self.output.find(needle, self.mark)  # after the previous match: one read may hold both
            if found >= 0:
                self.mark = found + len(needle)
                return True
            if time.monotonic() >= deadline:
                return False
            if select.select([self.fd], [], [], 0.05)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    return False
                if not data:
                    return False
                self.output += data

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_until(b"\0", 0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        return None


def test_at_a_terminal_logs_go_to_a_file_history_works_and_ctrl_c_leaves_at_once(tmp_path):
    term = PtyConsole(tmp_path, "--out", str(tmp_path / "out"))
    assert term.read_until(b"vpn> "), term.output
    assert f"Logs: {tmp_path / 'data' / 'console.log'}".encode() in term.output
    term.send(b"/vpn start\r")
    assert term.read_until(b"Config:"), term.output
    assert term.read_until(b"vpn> ", 5)  # the prompt is drawn again below the background output
    time.sleep(0.5)
    term.read_until(b"\0", 0.3)
    assert term.output.endswith(b"vpn> "), term.output[-200:]
    screen = term.output.decode(errors="replace")
    assert " INFO " not in screen and "audit" not in screen  # logs are in the file, not in the chat
    log = (tmp_path / "data" / "console.log").read_text()
    assert "audit user=console:" in log and "ready at" in log
    assert oct((tmp_path / "data" / "console.log").stat().st_mode & 0o777) == "0o600"
    secret = re.search(r"PrivateKey = (\S+)", screen).group(1)
    assert secret not in log

    term.send(b"\x1b[A")  # up-arrow: the last command again, not "control characters"
    assert term.read_until(b"/vpn start", 5)
    t0 = time.monotonic()
    term.send(b"\x03")  # Ctrl-C, without Enter
    assert term.wait_exit(5) == 0
    assert time.monotonic() - t0 < 3
    assert b"interrupted: leaving now" in term.output


def test_at_a_terminal_ctrl_d_leaves_on_a_new_line(tmp_path):
    term = PtyConsole(tmp_path, "--out", str(tmp_path / "out"))
    assert term.read_until(b"vpn> ")
    term.send(b"\x04")
    assert term.wait_exit(10) == 0
    assert term.output.endswith(b"vpn> \r\n"), term.output[-40:]


QR_GLYPHS = set("█▀▄▌▐") | {chr(c) for c in range(0x1FB00, 0x1FB3C)}


def _screen_lines(output: bytes) -> list[str]:
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode(errors="replace")).replace("\r", "")
    return text.split("\n")


@pytest.mark.parametrize("term_program, sextants", [("WezTerm", True), ("", False)])
def test_the_terminal_qr_is_printed_last_and_fits_80x24_where_sextants_draw(tmp_path, term_program, sextants):
    """At 80×24 the whole QR stays on screen (nothing prints after it but the prompt); sextants only
    where the terminal draws them, half blocks elsewhere."""
    term = PtyConsole(tmp_path, "--out", str(tmp_path / "out"), env={"TERM_PROGRAM": term_program, "LANG": "C.UTF-8"})
    assert term.read_until(b"vpn> "), term.output
    term.send(b"/vpn start\r")
    assert term.read_until(b"Config:"), term.output
    assert term.read_until(b"vpn> ", 10), term.output
    time.sleep(0.5)
    term.read_until(b"\0", 0.3)
    lines = _screen_lines(term.output[term.output.find(b"Config:"):])
    qr_rows = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) <= QR_GLYPHS | {" "}]
    assert qr_rows, lines
    first, last = qr_rows[0], qr_rows[-1]
    after = [line for line in lines[last + 1:] if line.strip()]
    assert all(line.strip().startswith("vpn>") for line in after), after  # nothing but the prompt after the QR
    used_sextants = any(ord(ch) >= 0x1FB00 for i in qr_rows for ch in lines[i])
    assert used_sextants is sextants
    if sextants:
        assert last - first + 1 + len(after) <= 24  # all of it in view at 80×24
    term.send(b"\x04")
    assert term.wait_exit(10) == 0
