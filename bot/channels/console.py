"""The terminal as a chat: try the bot locally, or script it with one command per stdin line.

The person at the terminal is the local operator (`console:<os user>`, an admin) unless `--as`
says otherwise. Configs are "delivered privately" by writing `<name>.conf` (mode 0600) and
`<name>.png` into the output folder and printing them to this terminal only.
"""
from __future__ import annotations

import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import TextIO

from bot.commands.dispatcher import Dispatcher
from bot.messages import ConversationRef, Identity, Incoming, UserKey
from bot.outbox import ConfigDelivery
from bot.tasks import TaskRunner
from cards.model import Card
from cards.qr import qr_terminal
from cards.text import render_card_text

CONVERSATION = ConversationRef("console", {})


def operator_key() -> UserKey:
    return UserKey("console", getpass.getuser() or "operator")


class ConsoleChannel:
    name = "console"

    def __init__(self, out_dir: Path, stream: TextIO | None = None) -> None:
        self._out_dir = out_dir
        self._stream = stream or sys.stdout

    def _print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        self._print(text)

    async def send_card(self, conv: ConversationRef, card: Card) -> None:
        self._print(render_card_text(card))

    async def send_progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        # A terminal log cannot edit a line that other output may follow: one line per step.
        self._print(f"… {text}")
        return "console"

    def can_deliver_privately(self, conv: ConversationRef) -> bool:
        return True

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        conf, png = await asyncio.to_thread(self._write, delivery)
        terminal_qr = await asyncio.to_thread(qr_terminal, delivery.config.reveal())
        self._print(f"\n# {delivery.tunnel_name}.conf — import it in WireGuard, or scan the QR code below\n")
        self._print(delivery.config.reveal())
        self._print(terminal_qr)
        self._print(f"Config: {conf}\nQR code: {png}")
        return f"Your VPN config is ready: {conf} (QR code: {png}). {delivery.expires_note}"

    def _write(self, delivery: ConfigDelivery) -> tuple[Path, Path]:
        self._out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        conf = self._out_dir / f"{delivery.tunnel_name}.conf"
        png = self._out_dir / f"{delivery.tunnel_name}.png"
        for path, data in ((conf, delivery.config.reveal().encode()), (png, delivery.qr_png)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        return conf.resolve(), png.resolve()


async def run_console(dispatcher: Dispatcher, runner: TaskRunner, identity: Identity, *, stdin: TextIO | None = None) -> None:
    """Read commands until end of input, then wait for the work they started (up to delivery)."""
    stdin = stdin or sys.stdin
    interactive = stdin.isatty()
    if interactive:
        print(f"VPN bot console — you are {identity.key}. Type /vpn help, or quit to leave.", flush=True)
    while True:
        if interactive:
            print("vpn> ", end="", flush=True)
        line = await asyncio.to_thread(stdin.readline)
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if interactive and text.lower() in ("quit", "exit"):
            break
        await dispatcher.handle(Incoming(identity=identity, text=text, conversation=CONVERSATION, is_private=True))
    await runner.wait_idle()
