"""The command line: `vpn-bot serve|console|reap|host-setup|teams-manifest|users`. Everything is built in bot/wiring.py."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

try:
    import aiohttp  # noqa: F401  (the first package the bot needs: a Python without them is told its name)

    from bot import preflight, wiring
    from bot.channels.console import ConsoleChannel, operator_key, qr_style, run_console
    from bot.logs import setup_logging
    from bot.messages import Identity, InvalidIdentity, UserKey
    from bot.settings import Settings, SettingsError, environment
    from provisioner.base import Provider
except ModuleNotFoundError as exc:  # a Python without the bot's packages (a fresh machine's python3): one line, no traceback
    if (exc.name or "").split(".")[0] in ("bot", "provisioner", "cards"):
        raise
    sys.exit(f"vpn-bot needs its packages (this Python has no {exc.name!r}): run ./scripts/try [command], "
             "which makes .venv and installs them; then .venv/bin/vpn-bot <command>")

log = logging.getLogger("app")
GC_YOUNG = 10_000  # net container allocations between young-generation collections in `serve` (after gc.freeze)


ENV_HELP = """\
environment (all optional; ./.env is read too, the real environment wins; README.md "Configuration"
has every variable with its default, .env.example lists them; an unknown VPN_/AZURE_/TEAMS_/GROUPME_
name is a warning):
  VPN_PROVIDER            dryrun (default), host, azure or aws
  VPN_USERS, VPN_ADMINS   who may use it: teams:<id>, groupme:<id>, console:<name>, local:<email> (a web
                          account from `vpn-bot users add`), email:<address>, domain:<example.org>
  VPN_SESSION_MINUTES     session length (30); VPN_MAX_SESSION_MINUTES, VPN_WARN_MINUTES, VPN_MAX_SESSIONS
  VPN_DATA_DIR            SQLite store, provider state and console.log (./data)
  VPN_STORE               sqlite (default) or azure-tables (AZURE_STORAGE_CONNECTION_STRING or AZURE_TABLES_ENDPOINT)
  HOST, PORT              where serve listens (127.0.0.1:3978); VPN_PUBLIC_URL: where people and servers reach it
  VPN_LOG_LEVEL           DEBUG, INFO (default), WARNING, ERROR; VPN_LOG_FORMAT text (default) or json
                          (reap prints one line of what it did, and warnings; DEBUG shows everything)
  VPN_METRICS_PORT        Prometheus /metrics on its own port (9464; 0 turns it off)
  WG_INTERFACE, WG_ENDPOINT, WG_POOL, WG_DNS, WG_ALLOWED_IPS   WireGuard (host provider; client configs)
  MicrosoftAppId, MicrosoftAppPassword, MicrosoftAppTenantId   Teams
  GROUPME_BOT_ID, GROUPME_GROUP_ID, GROUPME_CALLBACK_SECRET     GroupMe
  VPN_LOCAL_AUTH_SECRET   turns on the web page and API (32+ characters: `openssl rand -base64 32`);
                          VPN_ENTRA_TENANT_ID, VPN_ENTRA_API_AUDIENCE, VPN_ENTRA_SPA_CLIENT_ID: Microsoft sign-in;
                          VPN_CORS_ORIGINS: a page served from another origin
  AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZURE_LOCATION  azure provider
  AWS_REGION, AWS_ALLOWED_REGIONS, AWS_INSTANCE_TYPE, AWS_SPOT   aws provider (credentials: the AWS SDK's chain)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpn-bot",
        description="A chat bot that hands out short-lived WireGuard VPN access. Configured by environment variables (see README.md).",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="{serve,console,reap,host-setup,teams-manifest,users}")
    sub.add_parser("serve", help="run the HTTP service (default): /healthz and the chat channels")
    console = sub.add_parser("console", help="chat with the bot in this terminal (or pipe commands, one per line)")
    console.add_argument("--out", type=Path, default=Path("./out"), help="folder for delivered .conf and .png files (default ./out)")
    console.add_argument("--as", dest="as_identity", metavar="CHANNEL:ID", help="act as another identity, e.g. groupme:123 (subject to the allowlist)")
    console.add_argument("--email", help="with --as: the verified email that identity's channel would supply")
    console.add_argument("--qr", choices=("auto", "light", "dark"), default="auto",
                         help="terminal QR for a light or dark terminal theme (default auto: black on white at a colour terminal)")
    sub.add_parser("reap", help="one teardown/reconcile pass, then exit (for a scheduler): prints one line of what it did, and warnings")
    setup = sub.add_parser("host-setup", help="create the WireGuard interface for VPN_PROVIDER=host, with IP forwarding and NAT (asks first)")
    setup.add_argument("--port", type=int, default=51820, help="UDP port the interface listens on (default 51820)")
    setup.add_argument("--yes", action="store_true", help="apply without asking")
    manifest = sub.add_parser("teams-manifest", help="write the Teams app package (manifest + icons) for sideloading")
    manifest.add_argument("--out", type=Path, default=Path("vpn-bot.zip"), help="zip file to write (default vpn-bot.zip)")
    manifest.add_argument("--app-id", help="the Azure Bot's app id (default MicrosoftAppId); no secret is needed")
    manifest.add_argument("--name", default="VPN Bot", help="the app's name in Teams (≤30 characters)")
    manifest.add_argument("--website", help="https URL for the developer links (default VPN_PUBLIC_URL)")
    manifest.add_argument("--version", default="1.0.0", help="app version: bump it on every re-upload")
    users = sub.add_parser("users", help="local web accounts: add (password from stdin, never argv), remove, list")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="{add,remove,list}")
    add = users_sub.add_parser("add", help="add an account or set its password; the password is read from stdin")
    add.add_argument("email")
    remove = users_sub.add_parser("remove", help="remove an account (its tokens stop working at once)")
    remove.add_argument("email")
    users_sub.add_parser("list", help="list the accounts")
    return parser


async def serve(settings: Settings, provider: Provider) -> None:
    from aiohttp import web  # the server side: `console` and `reap` start without it

    host = settings.ops.listen_host
    if settings.ops.dev_mode:
        log.warning("=" * 72)
        log.warning("VPN_DEV_MODE=1: Teams requests are NOT authenticated. Listening on 127.0.0.1 only.")
        log.warning("Never run this way where anyone else can reach the port.")
        log.warning("=" * 72)
    for note in wiring.channels_off(settings):
        log.info("%s", note)
    runtime = wiring.Runtime(settings, provider, wiring.make_channels(settings))
    runner = web.AppRunner(wiring.build_http_app(runtime), access_log=None)
    await runner.setup()  # starts opening the store in the background: the port does not wait for it
    site = web.TCPSite(runner, host, settings.ops.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise preflight.listen_error(host, settings.ops.port, exc) from None
    log.info(
        "serving on http://%s:%d (provider %s; channels: %s)",
        host, settings.ops.port, provider.name, ", ".join(ch.name for ch in runtime.channels) or "none",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # docker stop / systemd send SIGTERM: shut down cleanly
        loop.add_signal_handler(sig, stop.set)
    # After the signal handlers, so a SIGTERM during the collection still shuts down cleanly.
    settle_heap()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def settle_heap() -> None:
    """Tune the collector for a long-running server, once it has loaded everything.

    Everything loaded so far (SDKs, modules: ~80k objects) lives as long as the process: frozen out of
    the collector's sight, a full collection under load pauses the loop for tens of ms, not 100+. The
    young generation is then collected once GC_YOUNG more container objects were allocated than freed,
    not 700: a chat message leaves cyclic garbage (aiohttp's and asyncio's request objects) and the
    survivors of its tasks, so at 700 the collector ran every 2-3 messages, ~10 % of a busy replica's
    CPU (bench/bench_chat.py); at 10,000, about 1 % (docs/decisions.md, issue 25 goal 4)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


async def console(settings: Settings, provider: Provider, args: argparse.Namespace) -> None:
    operator = operator_key()
    access = settings.access.with_operator(operator)
    if args.as_identity:
        identity = Identity(UserKey.parse(args.as_identity), email=args.email)
    else:
        identity = Identity(operator)
    theme, rows = qr_style(args.qr, sys.stdout)
    channel = ConsoleChannel(args.out, qr_theme=theme, qr_rows=rows)
    async with wiring.Runtime(settings, provider, [channel], access=access) as runtime:
        await run_console(runtime.dispatcher, runtime.runner, identity, terminal=channel.terminal, log_file=settings.ops.data_dir / "console.log")


async def reap(settings: Settings, provider: Provider) -> None:
    # The chat channels too (send-only: no HTTP server runs), so that with zero replicas the people
    # whose sessions this pass warns, ends or fails are still told, through the stored conversation.
    async with wiring.Runtime(settings, provider, wiring.make_channels(settings), background=False) as runtime:
        print(await wiring.reap_once(runtime), flush=True)


def read_password() -> str:
    """From the terminal without echo, or the first line of piped stdin; never from argv."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def users(settings: Settings, provider: Provider, args: argparse.Namespace) -> int:
    from bot.channels.web.signin_local import MIN_PASSWORD, hash_password, normalize_email
    from bot.store.ports import LocalUser

    async with wiring.Runtime(settings, provider, background=False) as runtime:
        store = runtime.store
        if args.users_command == "list":
            for user in await store.list_users():
                print(f"{user.email}\tlocal:{user.email}\tadded {user.created_at:%Y-%m-%d}")
            return 0
        try:
            email = normalize_email(args.email)
        except ValueError:
            print(f"{args.email[:80]!r} is not an email address", file=sys.stderr)
            return 2
        if args.users_command == "remove":
            if not await store.delete_user(email):
                print(f"no account {email}", file=sys.stderr)
                return 1
            print(f"removed {email}")
            return 0
        try:
            password = read_password()
        except (ValueError, EOFError) as exc:
            print(f"no password set: {exc}", file=sys.stderr)
            return 2
        if len(password) < MIN_PASSWORD:
            print(f"a password needs at least {MIN_PASSWORD} characters", file=sys.stderr)
            return 2
        hashed = await asyncio.to_thread(hash_password, password)
        del password
        await store.put_user(LocalUser(email, hashed, runtime.service.clock()))
        print(f"saved {email}: it signs in as local:{email} (allow it with VPN_USERS=local:{email} or an email:/domain: rule)")
        if settings.web is None:
            print("note: VPN_LOCAL_AUTH_SECRET is not set, so local sign-in is off until it is", file=sys.stderr)
        return 0


def write_teams_manifest(args: argparse.Namespace) -> int:
    """Needs only the public app id and a website: no secret, and every problem reported at once."""
    from bot.channels.teams.manifest import package, problems

    env = environment()
    app_id = (args.app_id or env.get("MicrosoftAppId", "")).strip()
    website = (args.website or env.get("VPN_PUBLIC_URL", "")).strip()
    found = problems(app_id, website=website, name=args.name, version=args.version)
    if found:
        print("teams-manifest: cannot build the package:\n" + "\n".join(f"  - {p}" for p in found), file=sys.stderr)
        return 2
    data = package(app_id, website=website, name=args.name.strip(), version=args.version)
    try:
        args.out.write_bytes(data)
    except OSError as exc:
        print(f"teams-manifest: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: upload it in Teams → Apps → Manage your apps → Upload a custom app")
    return 0


def host_setup(settings: Settings, args: argparse.Namespace) -> int:
    from provisioner.host_setup import run_interactive

    wg = settings.provider.wireguard
    return run_interactive(wg.interface, wg.pool, args.port, yes=args.yes)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "teams-manifest":
        return write_teams_manifest(args)
    command = args.command or "serve"
    try:
        settings = Settings.from_env()
        level = settings.ops.log_level
        if command == "reap" and level != "DEBUG":
            level = max(level, "WARNING", key=logging.getLevelName)  # for cron: one line of what it did, and warnings
        setup_logging(level, settings.ops.log_format)
        if command == "console" and args.as_identity:
            UserKey.parse(args.as_identity)
    except (SettingsError, InvalidIdentity) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    for line in settings.unknown:
        log.warning("%s", line)
    if command == "host-setup":
        return host_setup(settings, args)
    try:
        preflight.check(settings, command, args.out if command == "console" else None)
        provider = wiring.make_provider(settings)
    except preflight.StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if command == "users":
        return asyncio.run(users(settings, provider, args))
    try:
        if command == "serve":
            asyncio.run(serve(settings, provider))
        elif command == "console":
            asyncio.run(console(settings, provider, args))
        else:
            asyncio.run(reap(settings, provider))
    except KeyboardInterrupt:
        pass
    except preflight.StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
