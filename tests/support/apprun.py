"""Run the real app (`python app.py ...`) in a subprocess, as a user or a scheduler would."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


def app_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This interpreter's environment minus any VPN_/WG_ settings from outside, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VPN_", "WG_", "AZURE_", "GROUPME_", "Microsoft"))}
    # No /metrics unless a test asks (a fixed port would collide between concurrent test runs).
    env.update({"VPN_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "VPN_DRYRUN_STEP_SECONDS": "0.05", "VPN_ENV_FILE": os.devnull, "VPN_METRICS_PORT": "0"})
    env.setdefault("TEST_CWD", str(data_dir.parent))  # a default --out (./out) lands in the test's folder, never the tree
    env.update(extra)
    return env


def console(commands: list[str], env: dict[str, str], *args: str, prefix: list[str] = (), timeout: float = 60) -> subprocess.CompletedProcess:
    """Pipe commands, one per line, into `app.py console`; returns after the process exits."""
    return subprocess.run(
        [*prefix, sys.executable, APP, "console", *args],
        input="".join(c + "\n" for c in commands),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=env.get("TEST_CWD"),
    )


class LiveConsole:
    """`app.py console` with stdin held open, so a test can type, read, and kill it mid-flight."""

    def __init__(self, env: dict[str, str], *args: str, prefix: list[str] = ()) -> None:
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, APP, "console", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            bufsize=1,
            start_new_session=True,  # its own process group, so a "crash" takes its children with it
            cwd=env.get("TEST_CWD"),
        )
        self.lines: list[str] = []

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line:
                self.lines.append(line)
                if needle in line:
                    return line
            else:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        raise AssertionError(f"{needle!r} not seen; output so far:\n{''.join(self.lines)}")

    def kill(self) -> str:
        """SIGKILL to the whole process group, as a crashed container or systemd unit goes; returns the log."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()
