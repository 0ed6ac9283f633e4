"""Azurite's table service (npm `azurite`, installed by scripts/install-test-deps.sh) on 127.0.0.1.

In-memory, telemetry off, a free port; the well-known development account. Tests share one
Azurite and isolate themselves by table prefix.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

# Azurite's published development account (not a secret: it only opens a local emulator).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Azurite:
    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self._workspace = tempfile.mkdtemp(prefix="azurite-")

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"TableEndpoint=http://127.0.0.1:{self.port}/{DEV_ACCOUNT};"
        )

    @staticmethod
    def prefix() -> str:
        """A fresh table prefix: one test's tables, invisible to the others."""
        return "t" + secrets.token_hex(5)

    def start(self, timeout: float = 30) -> "Azurite":
        exe = shutil.which("azurite-table")
        if exe is None:
            raise RuntimeError("azurite-table is not installed: run scripts/install-test-deps.sh")
        env = dict(os.environ, APPLICATION_INSIGHTS_NO_STATSBEAT="1", AZURITE_DISABLE_TELEMETRY="1")
        self.proc = subprocess.Popen(
            [exe, "--tableHost", "127.0.0.1", "--tablePort", str(self.port), "--inMemoryPersistence",
             "--disableTelemetry", "--silent", "--skipApiVersionCheck"],
            env=env, cwd=self._workspace, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"azurite-table exited: {self.proc.stderr.read().decode(errors='replace')[:500]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"azurite-table did not listen on 127.0.0.1:{self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._workspace, ignore_errors=True)


if __name__ == "__main__":  # for bench/: `python -m tests.fakes.azurite` prints the connection string, runs until SIGTERM
    import signal
    import sys

    server = Azurite()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that `finally` stops azurite-table (its own session)
    try:
        print(server.start().connection_string, flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
