"""The terminal as a chat: try the bot locally, or script it with one command per stdin line.

The person at the terminal is the local operator (`console:<os user>`, an admin) unless `--as`
says otherwise. Configs are "delivered privately" by writing `<name>.conf` (mode 0600) and
`<name>.png` into the output folder and printing them to this terminal only; the console removes
them once their session has ended. At a terminal, input has line editing and history (readline),
Ctrl-C leaves at once, Ctrl-D leaves after the work it started, logs go to a file with only warnings
inline, and the prompt is redrawn below whatever the bot prints in the background.
"""
from __future__ import annotations

import asyncio
import getpass
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Mapping, TextIO

from bot.channels.deps import ChatDeps
from bot.chat.dispatcher import Dispatcher
from bot.engine.tasks import TaskRunner
from bot.logs import route_to_file
from bot.messages import ConversationRef, Identity, Incoming, UserKey
from bot.replies import ChannelDefaults, ConfigDelivery
from bot.store.ports import SessionReader
from cards.model import Card
from cards.qr import qr_terminal
from cards.text import render_card_text

log = logging.getLogger(__name__)
PROMPT = "vpn> "
CONVERSATION = ConversationRef("console", {})


def operator_key() -> UserKey:
    return UserKey("console", getpass.getuser() or "operator")


class Terminal:
    """Where the console prints: clears a waiting prompt, prints, and draws the prompt (and what was typed) again."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.prompt: str | None = None  # set while input() waits at a terminal
        self._lock = threading.Lock()  # log records may come from worker threads

    def write(self, text: str) -> None:
        with self._lock:
            if self.prompt is not None:
                self.stream.write("\r\x1b[K")
            self.stream.write(text + "\n")
            if self.prompt is not None:
                self.stream.write(self.prompt + _typed_so_far())
            self.stream.flush()


class TerminalLogHandler(logging.Handler):
    """Warnings and errors shown in the chat, without losing the prompt."""

    def __init__(self, terminal: Terminal) -> None:
        super().__init__(logging.WARNING)
        self.terminal = terminal

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.terminal.write(self.format(record))
        except Exception:
            self.handleError(record)


class ConsoleChannel(ChannelDefaults):
    name = "console"

    def __init__(self, out_dir: Path, stream: TextIO | None = None, *, qr_theme: str = "dark", qr_rows: int | None = None) -> None:
        self._out_dir = out_dir
        self.terminal = Terminal(stream)
        self._qr_theme = qr_theme
        self._qr_rows = qr_rows
        self._sessions: SessionReader | None = None
        self._pending_qr = ""  # shown after the next message, so it stays on screen

    async def attach(self, deps: ChatDeps) -> None:
        self._sessions = deps.sessions
        await self.remove_dead_configs()

    def _print(self, text: str) -> None:
        self.terminal.write(text)

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        self._print(text)
        if self._pending_qr:
            qr, self._pending_qr = self._pending_qr, ""
            self._print(qr)
        await self.remove_dead_configs()  # e.g. after "your session has ended"

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
        sextants = terminal_draws_sextants(os.environ)
        terminal_qr = await asyncio.to_thread(
            qr_terminal, delivery.config.reveal(), theme=self._qr_theme, max_rows=self._qr_rows, sextants=sextants
        )
        self._print(f"\n# {delivery.tunnel_name}.conf — import it in WireGuard, or scan the QR code (printed last, below)\n")
        self._print(delivery.config.reveal())
        self._print(f"Config: {conf}\nQR code: {png}\n(both are removed when the session ends)")
        # The QR goes out after the next message (the session is ready / the server is booting), so
        # it is the last thing on the screen and all of it stays in view at 80×24.
        self._pending_qr = terminal_qr
        return f"Your VPN config is ready: {conf} (QR code: {png}). {delivery.expires_note}"

    def _write(self, delivery: ConfigDelivery) -> tuple[Path, Path]:
        try:
            self._out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            conf = self._out_dir / f"{delivery.tunnel_name}.conf"
            png = self._out_dir / f"{delivery.tunnel_name}.png"
            for path, data in ((conf, delivery.config.reveal().encode()), (png, delivery.qr_png)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
        except OSError as exc:
            raise OSError(f"cannot write the config into {self._out_dir}: {exc.strerror} (choose another folder with --out)") from None
        return conf.resolve(), png.resolve()

    async def remove_dead_configs(self) -> None:
        """Delete delivered files whose session this store knows has ended: their keys are dead."""
        if self._sessions is None or not self._out_dir.is_dir():
            return
        for conf in self._out_dir.glob("vpn-*.conf"):
            session = await self._sessions.get(conf.stem.removeprefix("vpn-"))
            if session is not None and not session.is_active:
                for path in (conf, conf.with_suffix(".png")):
                    path.unlink(missing_ok=True)
                log.info("removed %s: session %s has ended", conf.name, session.id)


# Terminals known to draw U+1FB00 sextants themselves (no font needed); elsewhere half blocks.
_SEXTANT_PROGRAMS = ("wezterm", "kitty", "ghostty", "foot", "contour", "iterm.app")


def terminal_draws_sextants(env: Mapping[str, str]) -> bool:
    """Whether the QR may use sextants (3 rows of modules per line, so a config's QR fits 80×24): only
    in a UTF-8 locale at a terminal known to draw them; the Linux console and unknown ones get half
    blocks (taller, but every font has them) — the PNG beside the .conf is always there too."""
    program = (env.get("TERM_PROGRAM") or "").lower()
    term = (env.get("TERM") or "").lower()
    if "utf-8" not in (env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "utf-8").lower().replace("utf8", "utf-8"):
        return False
    return program in _SEXTANT_PROGRAMS or term in ("xterm-kitty", "foot", "xterm-ghostty") or "WT_SESSION" in env


def qr_style(choice: str, stream: TextIO) -> tuple[str, int | None]:
    """`--qr auto|light|dark` -> (theme, max rows): at a colour terminal black on white and fit to its height."""
    tty = stream.isatty()
    rows = max(os.get_terminal_size(stream.fileno()).lines - 2, 10) if tty else None
    if choice != "auto":
        return choice, rows
    colour = tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM", "dumb") != "dumb"
    return ("ansi" if colour else "dark"), rows


def _typed_so_far() -> str:
    readline = sys.modules.get("readline")
    return readline.get_line_buffer() if readline is not None else ""


def _read_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, stdin: TextIO, terminal: Terminal | None) -> None:
    """A daemon thread: a blocked read never holds up leaving (asyncio.to_thread's would, until Enter)."""
    while True:
        try:
            if terminal is not None:
                terminal.prompt = PROMPT
                try:
                    line: str | None = input(PROMPT)  # readline: editing and history
                finally:
                    terminal.prompt = None
            else:
                line = stdin.readline() or None
        except EOFError:
            line = None
        except Exception:  # a closed or broken stdin ends input like EOF
            line = None
        loop.call_soon_threadsafe(queue.put_nowait, line)
        if line is None:
            return


async def run_console(
    dispatcher: Dispatcher,
    runner: TaskRunner,
    identity: Identity,
    *,
    stdin: TextIO | None = None,
    terminal: Terminal | None = None,
    log_file: Path | None = None,
) -> None:
    """Read commands until end of input, then wait for the work they started (up to delivery).

    At a terminal Ctrl-C leaves at once (work in progress is picked up by the next start).
    """
    stdin = stdin or sys.stdin
    interactive = stdin.isatty() and stdin is sys.stdin
    terminal = terminal or Terminal()
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    saved_tty = None
    if interactive:
        import readline  # noqa: F401  (input() gains line editing and history)
        import termios

        saved_tty = termios.tcgetattr(stdin.fileno())
        if log_file is not None:
            route_to_file(log_file, TerminalLogHandler(terminal))
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        where = f" Logs: {log_file}." if log_file is not None else ""
        terminal.write(f"VPN bot console — you are {identity.key}. Type /vpn help; quit, Ctrl-D or Ctrl-C to leave.{where}")
    queue: asyncio.Queue = asyncio.Queue()
    threading.Thread(target=_read_lines, args=(loop, queue, stdin, terminal if interactive else None), name="console-input", daemon=True).start()
    interrupt = asyncio.ensure_future(interrupted.wait())
    try:
        while True:
            line_task = asyncio.ensure_future(queue.get())
            await asyncio.wait({line_task, interrupt}, return_when=asyncio.FIRST_COMPLETED)
            if interrupted.is_set():
                line_task.cancel()
                break
            line = line_task.result()
            if line is None:
                if interactive:
                    terminal.stream.write("\n")  # Ctrl-D leaves the cursor after the prompt
                break
            text = line.strip()
            if not text:
                continue
            if interactive and text.lower() in ("quit", "exit"):
                break
            await dispatcher.handle(Incoming(identity=identity, text=text, conversation=CONVERSATION, is_private=True))
        if not interrupted.is_set():
            idle = asyncio.ensure_future(runner.wait_idle())
            await asyncio.wait({idle, interrupt}, return_when=asyncio.FIRST_COMPLETED)
            idle.cancel()
        if interrupted.is_set():
            terminal.prompt = None  # the reader thread is abandoned at its prompt
            terminal.write("\ninterrupted: leaving now; unfinished work resumes at the next start")
            await runner.shutdown(grace=0)
    finally:
        interrupt.cancel()
        if interactive:
            loop.remove_signal_handler(signal.SIGINT)
            import termios

            if saved_tty is not None:
                termios.tcsetattr(stdin.fileno(), termios.TCSADRAIN, saved_tty)
