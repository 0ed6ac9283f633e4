"""Notification settings (issue 23): VPN_NOTIFY (where events go) and VPN_NOTIFY_SECRET (webhook signatures).

VPN_NOTIFY is a comma-separated list of `https://…` webhooks (http:// only to a loopback address),
`teams:<conversation id>` and `groupme:<group id>`; chats an admin registers with `/vpn notify here`
come on top. docs/usage.md has the webhook format and a verification snippet. VPN_NOTIFY_TEAMS_URL is the
Bot Connector a `teams:<id>` target is sent to (Microsoft's global one unless a sovereign cloud needs its own).
"""
from __future__ import annotations

from urllib.parse import urlsplit

from bot.engine.notify import TEAMS_SERVICE_URL, NotifyConfig
from bot.settings.reader import Reader, SettingsError, public_url

MIN_SECRET = 16
EXPECTS = "comma-separated targets: https://… webhooks, teams:<conversation id>, groupme:<group id>"


def targets(text: str) -> tuple[str, ...]:
    out: list[str] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        channel, _, ident = item.partition(":")
        if channel.lower() in ("https", "http"):
            parts = urlsplit(item)
            local = parts.hostname in ("127.0.0.1", "localhost", "::1")
            if not parts.hostname or parts.scheme == "http" and not local:
                raise ValueError(item)
        elif channel.lower() not in ("teams", "groupme") or not ident.strip() or any(c.isspace() for c in ident.strip()):
            raise ValueError(item)
        else:
            item = f"{channel.lower()}:{ident.strip()}"
        if item not in out:
            out.append(item)
    return tuple(out)


def service_url(text: str) -> str:
    """An https:// URL (http:// only to a loopback address, for a local fake), kept with one trailing slash."""
    if not public_url(text):
        raise ValueError(text)
    return text.rstrip("/") + "/"


def read(r: Reader) -> NotifyConfig:
    found = r.parse("VPN_NOTIFY", "", targets, EXPECTS)
    secret = r.text("VPN_NOTIFY_SECRET", "")
    webhooks = [t for t in found if "://" in t]
    if webhooks and len(secret) < MIN_SECRET:
        raise SettingsError(
            f"VPN_NOTIFY_SECRET must be at least {MIN_SECRET} characters with a webhook in VPN_NOTIFY: every delivery is signed with it "
            "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    teams_url = r.parse("VPN_NOTIFY_TEAMS_URL", TEAMS_SERVICE_URL, service_url, "an https:// URL (a Bot Connector service URL)")
    return NotifyConfig(found, secret, teams_url=teams_url)
