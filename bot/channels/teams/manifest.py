"""The Teams app package for sideloading: manifest.json plus two icons, zipped. Pure: no botbuilder.

Icons are drawn with Pillow: a 192×192 colour icon and a 32×32 white outline on transparency, as
Teams requires.
"""
from __future__ import annotations

import io
import json
import re
import uuid
import zipfile
from urllib.parse import urlsplit

from PIL import Image, ImageDraw

SCHEMA_VERSION = "1.17"
ACCENT = "#2563EB"
COMMANDS = (
    ("vpn start", "Get a VPN config, sent to you privately"),
    ("vpn status", "Your session: where, state, time left"),
    ("vpn extend", "Keep your session longer"),
    ("vpn stop", "End your session now"),
    ("vpn help", "What I can do"),
)
ADMIN_COMMANDS = (("vpn list", "Admins: every live session, with cost"),)


def _shield(draw: ImageDraw.ImageDraw, size: int, fill, outline, width: int) -> None:
    m = size * 0.18
    top, bottom = size * 0.14, size * 0.88
    points = [(size / 2, top), (size - m, top + size * 0.12), (size - m, size * 0.5), (size / 2, bottom), (m, size * 0.5), (m, top + size * 0.12)]
    draw.polygon(points, fill=fill, outline=outline, width=width)


def color_icon() -> bytes:
    img = Image.new("RGBA", (192, 192), ACCENT)
    draw = ImageDraw.Draw(img)
    _shield(draw, 192, fill="white", outline=None, width=0)
    draw.rectangle((80, 92, 112, 120), fill=ACCENT)  # a padlock body
    draw.arc((84, 70, 108, 100), 180, 360, fill=ACCENT, width=6)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def outline_icon() -> bytes:
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    _shield(ImageDraw.Draw(img), 32, fill=None, outline=(255, 255, 255, 255), width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def manifest(bot_id: str, *, name: str = "VPN Bot", website: str, version: str = "1.0.0", app_id: str | None = None) -> dict:
    commands = [{"title": t, "description": d} for t, d in COMMANDS + ADMIN_COMMANDS]
    scopes = ["personal", "team", "groupChat"]
    return {
        "$schema": f"https://developer.microsoft.com/json-schemas/teams/v{SCHEMA_VERSION}/MicrosoftTeams.schema.json",
        "manifestVersion": SCHEMA_VERSION,
        "version": version,
        "id": app_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"vpn-bot:{bot_id}")),
        "developer": {
            "name": name,
            "websiteUrl": website,
            "privacyUrl": f"{website.rstrip('/')}/privacy",
            "termsOfUseUrl": f"{website.rstrip('/')}/terms",
        },
        "name": {"short": name[:30], "full": f"{name}: short-lived WireGuard VPN access"[:100]},
        "description": {
            "short": "Short-lived WireGuard VPN access, delivered privately."[:80],
            "full": (
                "Type 'vpn start' to get a WireGuard configuration that works for a limited time. The bot sets up a "
                "server, sends the configuration and a QR code to you in a private chat, and removes everything when "
                "the session ends. Admins see every live session and its cost with 'vpn list'."
            ),
        },
        "icons": {"color": "color.png", "outline": "outline.png"},
        "accentColor": ACCENT,
        "bots": [
            {
                "botId": bot_id,
                "scopes": scopes,
                "supportsFiles": True,
                "isNotificationOnly": False,
                "commandLists": [{"scopes": scopes, "commands": commands}],
            }
        ],
        "permissions": ["identity", "messageTeamMembers"],
        "validDomains": [],
    }


def problems(bot_id: str, *, website: str, name: str, version: str) -> list[str]:
    """Every reason Teams would refuse this package, at once (no secret is needed to build one)."""
    found = []
    if not re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", bot_id):
        found.append(f"app id {bot_id!r} is not a GUID: set MicrosoftAppId (or --app-id) to the Azure Bot's app id" if bot_id
                     else "no app id: set MicrosoftAppId (or --app-id) to the Azure Bot's app id")
    parts = urlsplit(website)
    if parts.scheme != "https" or not parts.hostname:
        found.append(f"website {website!r} is not an https:// URL: pass --website https://… or set VPN_PUBLIC_URL" if website
                     else "no website: pass --website https://… or set VPN_PUBLIC_URL (Teams shows it as the developer's site)")
    if not 1 <= len(name.strip()) <= 30:
        found.append(f"name {name!r} must be 1 to 30 characters")
    if not re.fullmatch(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)", version):
        found.append(f"version {version!r} is not MAJOR.MINOR.PATCH, e.g. 1.0.1 (bump it on every re-upload)")
    return found


def package(bot_id: str, *, website: str, name: str = "VPN Bot", version: str = "1.0.0") -> bytes:
    """The zip Teams accepts under Apps → Manage your apps → Upload a custom app."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps(manifest(bot_id, name=name, website=website, version=version), indent=2))
        z.writestr("color.png", color_icon())
        z.writestr("outline.png", outline_icon())
    return buf.getvalue()
