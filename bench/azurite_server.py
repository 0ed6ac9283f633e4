"""Azurite's table service on 127.0.0.1 for the benchmarks (bench/ imports nothing from tests/).

The same start as tests/fakes/azurite.py: in memory, telemetry off, a free port, the well-known
development account (not a secret: it only opens a local emulator).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"TableEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};")


class AzuriteServer:
    """`with AzuriteServer() as port:` Azurite listening on 127.0.0.1:port until the block ends."""

    def __enter__(self) -> int:
        exe = shutil.which("azurite-table")
        if exe is None:
            raise SystemExit("azurite-table is not installed: run scripts/install-test-deps.sh")
        self._workspace = tempfile.mkdtemp(prefix="azurite-bench-")
        self.port = free_port()
        env = dict(os.environ, APPLICATION_INSIGHTS_NO_STATSBEAT="1", AZURITE_DISABLE_TELEMETRY="1")
        self._proc = subprocess.Popen(
            [exe, "--tableHost", "127.0.0.1", "--tablePort", str(self.port), "--inMemoryPersistence", "--disableTelemetry",
             "--silent", "--skipApiVersionCheck"],
            env=env, cwd=self._workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SystemExit("azurite-table exited at start")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self.port
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise SystemExit("azurite-table did not listen within 30 s")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def __exit__(self, *exc) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._workspace, ignore_errors=True)
