"""What several benchmarks share: a channel that records deliveries, the app's own processes and the
fakes' (tests/fakes/, each run as its own process and reached over HTTP only: bench/ imports nothing
from tests/), and a static Azure credential for the app against the fake ARM.

No project imports at module level, so a benchmark that measures memory by stage can import it first.

    python bench/common.py <app.py arguments>   the app, its Azure credential a StaticCredential
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class TimingChannel:
    """A channel (bot/replies.py's protocol, written out: importing it would load the project) that accepts
    everything and records when each person's config was delivered."""

    name = "bench"
    speaks_commands = True

    def __init__(self) -> None:
        self.delivered: dict[str, float] = {}

    async def attach(self, deps): ...
    async def send_text(self, conv, text): ...
    async def send_card(self, conv, card): ...
    async def send_progress(self, conv, text, handle):
        return handle or "p"

    def can_deliver_privately(self, conv):
        return True

    async def check_private_delivery(self, conv, recipient): ...
    async def deliver_config(self, conv, recipient, delivery):
        self.delivered[str(recipient.key)] = time.perf_counter()
        return "delivered"

    async def retract_config(self, conv, session_id, handle): ...
    def routes(self, app): ...


class StaticCredential:
    """An async Azure token credential with a fixed token, for a fake ARM on 127.0.0.1: nothing reaches
    for a real identity (DefaultAzureCredential would probe the metadata service at 169.254.169.254)."""

    async def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("bench-token", int(time.time()) + 3600)


def app_with_static_credential(argv: list[str]) -> int:
    """app.py's main(argv), with a StaticCredential where the azure provider would build its default one."""
    sys.path.insert(0, str(ROOT))
    import app
    from provisioner import azure

    azure.default_credential = StaticCredential
    return app.main(argv)


def app_env(**settings: str) -> dict[str, str]:
    """This environment without the app's own variables (a developer's VPN_*, AZURE_*, …), plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VPN_", "WG_", "AZURE_", "GROUPME_", "Microsoft"))}
    env.update(settings)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def fake_process(name: str, *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python -m tests.fakes.<name> ARGS` from the project root: a fake platform server in its own process.

    Yields the first line it prints (its base URL) and the process; stops it (SIGTERM) on the way out."""
    proc = subprocess.Popen([sys.executable, "-m", f"tests.fakes.{name}", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()
        if not first:
            raise SystemExit(f"tests.fakes.{name} did not start (exit code {proc.wait()})")
        yield first, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_healthy(url: str, proc: subprocess.Popen, what: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"{what} exited with {proc.returncode}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{what} did not come up")


if __name__ == "__main__":
    sys.exit(app_with_static_credential(sys.argv[1:]))
