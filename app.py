"""Composition root: read settings, build the parts, run `serve`, `console` or `reap`. No logic lives here."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import shlex
import signal
import sys
from pathlib import Path

from aiohttp import web

from bot import preflight
from bot.http import ready_callback
from bot.access import AccessPolicy, RuleError, parse_rules
from bot.channels.console import ConsoleChannel, operator_key, qr_style, run_console
from bot.channels.web.page import WebOffPage
from bot.logs import setup_logging
from bot.messages import Identity, InvalidIdentity, UserKey
from bot.wiring import Runtime
from bot.settings import Settings, SettingsError, environment
from bot.http.app import create_app
from provisioner.base import Provider

log = logging.getLogger("app")


def make_provider(settings: Settings, azure_credential=None) -> Provider:
    """The configured back end; tests inject an Azure credential (never DefaultAzureCredential)."""
    if settings.provider == "host":
        from provisioner.host import HostProvider

        return HostProvider(
            settings.wg_interface,
            settings.wg_endpoint,
            settings.wg_pool,
            wg_command=shlex.split(settings.wg_command),
            hourly_cost=settings.hourly_cost,
        )
    if settings.provider == "azure":
        from provisioner import azure

        config = azure.AzureConfig(
            subscription_id=settings.azure_subscription_id,
            resource_group=settings.azure_resource_group,
            location=settings.azure_location,
            allowed_locations=settings.azure_allowed_locations,
            vm_size=settings.azure_vm_size,
            image=settings.azure_image,
            arm_endpoint=settings.azure_arm_endpoint,
            instance_name=settings.instance_name,
            deployment_id=settings.deployment_id,
            tunnel_network=str(settings.wg_pool),
            ssh_public_key=settings.azure_ssh_public_key,
            ssh_source=settings.azure_ssh_source,
            dns=settings.wg_dns,
            full_tunnel="0.0.0.0/0" in settings.wg_allowed_ips,
            boot_timeout=settings.azure_boot_timeout_seconds,
            polling_interval=settings.azure_poll_seconds,
            hourly_cost_override=settings.azure_hourly_cost,
        )
        return azure.AzureProvider(config, azure_credential or azure.default_credential())
    from provisioner.dryrun import DryRunProvider

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return DryRunProvider(
        settings.data_dir / "dryrun-servers.json",
        pool=settings.wg_pool,
        regions=settings.dryrun_regions,
        step_seconds=settings.dryrun_step_seconds,
        fail_step=settings.dryrun_fail_step or None,
        hourly_cost=settings.hourly_cost,
    )


def make_access(settings: Settings) -> AccessPolicy:
    rules = {}
    for name, text in (("VPN_USERS", settings.users), ("VPN_ADMINS", settings.admins)):
        try:
            rules[name] = parse_rules(text)
        except RuleError as exc:
            raise SettingsError(f"{name}: {exc}") from None
    return AccessPolicy(rules["VPN_USERS"], rules["VPN_ADMINS"])


ENV_HELP = """\
environment (all optional; ./.env is read too, the real environment wins; README.md "Configuration"
has every variable with its default, .env.example lists them):
  VPN_PROVIDER            dryrun (default), host or azure
  VPN_USERS, VPN_ADMINS   who may use it: teams:<id>, groupme:<id>, console:<name>, email:<a>, domain:<d>
  VPN_SESSION_MINUTES     session length (30); VPN_MAX_SESSION_MINUTES, VPN_WARN_MINUTES, VPN_MAX_SESSIONS
  VPN_DATA_DIR            SQLite store, provider state and console.log (./data)
  HOST, PORT              where serve listens (127.0.0.1:3978)
  VPN_LOG_LEVEL           DEBUG, INFO (default), WARNING, ERROR
  WG_INTERFACE, WG_ENDPOINT, WG_POOL, WG_DNS, WG_ALLOWED_IPS   WireGuard (host provider; client configs)
  MicrosoftAppId, MicrosoftAppPassword, MicrosoftAppTenantId   Teams
  GROUPME_BOT_ID, GROUPME_GROUP_ID, GROUPME_CALLBACK_SECRET     GroupMe
  AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP, AZURE_LOCATION  azure provider
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py",
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
    sub.add_parser("reap", help="one teardown/reconcile pass, then exit (for a scheduler)")
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


def make_channels(settings: Settings) -> list:
    """The chat channels `serve` runs, from what is configured."""
    channels = []
    if settings.teams_app_id or settings.dev_mode:
        from bot.channels.teams.channel import TeamsChannel
        from bot.channels.teams.config import TeamsConfig

        channels.append(
            TeamsChannel(
                TeamsConfig(
                    app_id=settings.teams_app_id,
                    app_password=settings.teams_app_password,
                    app_type=settings.teams_app_type,
                    tenant_id=settings.teams_tenant_id,
                    dev_mode=settings.dev_mode,
                    allowed_tenants=settings.teams_allowed_tenants,
                    upload_hosts=settings.teams_upload_hosts,
                )
            )
        )
    else:
        log.info("Teams is off: set MicrosoftAppId (or VPN_DEV_MODE=1 to try it locally without credentials)")
    if settings.groupme_bot_id or settings.groupme_bots:
        from bot.channels.groupme.channel import GroupMeChannel
        from bot.channels.groupme.config import GroupMeConfig

        channels.append(
            GroupMeChannel(
                GroupMeConfig(
                    bot_id=settings.groupme_bot_id,
                    bots=settings.groupme_bots,
                    group_ids=settings.groupme_group_ids,
                    callback_secret=settings.groupme_callback_secret,
                    access_token=settings.groupme_access_token,
                    oauth_client_id=settings.groupme_oauth_client_id,
                    api_url=settings.groupme_api_url,
                    oauth_url=settings.groupme_oauth_url,
                    public_url=settings.public_url,
                    claim_minutes=settings.groupme_claim_minutes,
                    per_user_per_minute=settings.groupme_user_per_minute,
                    per_group_per_minute=settings.groupme_group_per_minute,
                )
            )
        )
    if settings.web_enabled:
        from bot.channels.web.channel import WebChannel
        from bot.channels.web.config import WebConfig

        channels.append(
            WebChannel(
                WebConfig(
                    local_secret=settings.local_auth_secret,
                    entra_tenant_id=settings.entra_tenant_id,
                    entra_audience=settings.entra_api_audience,
                    entra_spa_client_id=settings.entra_spa_client_id,
                    entra_authority=settings.entra_authority,
                    cors_origins=settings.cors_origins,
                )
            )
        )
    else:
        log.info("The web page and API are off: set VPN_LOCAL_AUTH_SECRET (and VPN_ENTRA_* for Microsoft sign-in)")
    return channels


async def serve(settings: Settings, provider: Provider, access: AccessPolicy) -> None:
    host = settings.host
    if settings.dev_mode:
        log.warning("=" * 72)
        log.warning("VPN_DEV_MODE=1: Teams requests are NOT authenticated. Listening on 127.0.0.1 only.")
        log.warning("Never run this way where anyone else can reach the port.")
        log.warning("=" * 72)
        host = "127.0.0.1"
    channels = make_channels(settings)
    hooks = [ch.routes for ch in channels]
    hooks.append(ready_callback.routes)  # servers (Azure VMs) calling back "tunnel up", verified against the store
    hooks += [] if settings.web_enabled else [WebOffPage().register]  # `/` says how to turn the web page on (issue 21.6)
    app = create_app(lambda: Runtime(settings, provider, access, channels), hooks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise preflight.listen_error(host, settings.port, exc) from None
    log.info(
        "serving on http://%s:%d (provider %s; channels: %s)",
        host, settings.port, provider.name, ", ".join(ch.name for ch in channels) or "none",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # docker stop / systemd send SIGTERM: shut down cleanly
        loop.add_signal_handler(sig, stop.set)
    # Everything loaded so far (SDKs, modules: ~80k objects) lives as long as the process: out of the
    # collector's sight, a full collection under load pauses the loop for tens of ms, not 100+.
    # After the signal handlers, so a SIGTERM during the collection still shuts down cleanly.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


async def console(settings: Settings, provider: Provider, access: AccessPolicy, args: argparse.Namespace) -> None:
    operator = operator_key()
    access = access.with_operator(operator)
    if args.as_identity:
        identity = Identity(UserKey.parse(args.as_identity), email=args.email)
    else:
        identity = Identity(operator)
    theme, rows = qr_style(args.qr, sys.stdout)
    channel = ConsoleChannel(args.out, qr_theme=theme, qr_rows=rows)
    async with Runtime(settings, provider, access, [channel]) as runtime:
        await run_console(runtime.dispatcher, runtime.runner, identity, terminal=channel.terminal, log_file=settings.data_dir / "console.log")


async def reap(settings: Settings, provider: Provider, access: AccessPolicy) -> None:
    # The chat channels too (send-only: no HTTP server runs), so that with zero replicas the people
    # whose sessions this pass warns, ends or fails are still told, through the stored conversation.
    async with Runtime(settings, provider, access, make_channels(settings), background=False) as runtime:
        removed = await runtime.service.reap_once()
        log.info("reap pass done; %d orphaned resource(s) removed", removed)


def read_password() -> str:
    """From the terminal without echo, or the first line of piped stdin; never from argv."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


async def users(settings: Settings, provider: Provider, access: AccessPolicy, args: argparse.Namespace) -> int:
    from bot.channels.web.signin_local import MIN_PASSWORD, hash_password, normalize_email
    from bot.store.ports import LocalUser

    async with Runtime(settings, provider, access, background=False) as runtime:
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
        if not settings.local_auth_secret:
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

    return run_interactive(settings.wg_interface, settings.wg_pool, args.port, yes=args.yes)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "teams-manifest":
        return write_teams_manifest(args)
    try:
        settings = Settings.from_env()
        setup_logging(settings.log_level, settings.log_format)
        access = make_access(settings)
        if args.command == "console" and args.as_identity:
            UserKey.parse(args.as_identity)
    except (SettingsError, InvalidIdentity) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    command = args.command or "serve"
    if command == "host-setup":
        return host_setup(settings, args)
    try:
        preflight.check(settings, command, args.out if command == "console" else None)
        provider = make_provider(settings)
    except preflight.StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if command == "users":
        return asyncio.run(users(settings, provider, access, args))
    try:
        if command == "serve":
            asyncio.run(serve(settings, provider, access))
        elif command == "console":
            asyncio.run(console(settings, provider, access, args))
        else:
            asyncio.run(reap(settings, provider, access))
    except KeyboardInterrupt:
        pass
    except preflight.StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
