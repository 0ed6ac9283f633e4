"""The Teams app package (bot/channels/teams/manifest.py) and the command that writes it."""
from __future__ import annotations

import json
import re

from tests.channels.teams.harness import (
    TENANT,
)


def test_manifest_package(tmp_path):
    import io
    import zipfile

    from PIL import Image

    from bot.channels.teams.manifest import package

    data = package("11111111-2222-3333-4444-555555555555", website="https://vpn.example.org", version="1.2.3")
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == ["color.png", "manifest.json", "outline.png"]
    m = json.loads(z.read("manifest.json"))
    assert m["manifestVersion"] == "1.17" and m["version"] == "1.2.3" and re.fullmatch(r"[0-9a-f-]{36}", m["id"])
    assert len(m["name"]["short"]) <= 30 and len(m["description"]["short"]) <= 80 and len(m["description"]["full"]) <= 4000
    assert all(m["developer"][k].startswith("https://") for k in ("websiteUrl", "privacyUrl", "termsOfUseUrl"))
    assert re.fullmatch(r"#[0-9A-F]{6}", m["accentColor"])
    (b,) = m["bots"]
    assert b["botId"] == "11111111-2222-3333-4444-555555555555" and b["supportsFiles"] is True
    assert set(b["scopes"]) == {"personal", "team", "groupChat"}
    assert len(b["commandLists"]) <= 3 and all(len(cl["commands"]) <= 10 for cl in b["commandLists"])
    assert all(c["description"] for cl in b["commandLists"] for c in cl["commands"])
    color = Image.open(io.BytesIO(z.read("color.png")))
    outline = Image.open(io.BytesIO(z.read("outline.png")))
    assert color.size == (192, 192) and outline.size == (32, 32) and outline.mode == "RGBA"
    pixels = [outline.getpixel((x, y)) for x in range(32) for y in range(32)]
    assert {p[3] for p in pixels} >= {0, 255}  # transparent background, opaque outline
    assert all(p[:3] == (255, 255, 255) for p in pixels if p[3])  # the outline is white


def test_manifest_command(tmp_path):
    import subprocess
    import sys

    from tests.support.apprun import APP, app_env

    env = app_env(tmp_path / "data", MicrosoftAppId="11111111-2222-3333-4444-555555555555", MicrosoftAppPassword="x",
                  MicrosoftAppTenantId=TENANT, VPN_PUBLIC_URL="https://vpn.example.org")
    out = tmp_path / "vpn-bot.zip"
    result = subprocess.run([sys.executable, APP, "teams-manifest", "--out", str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 500
