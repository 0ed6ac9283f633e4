"""The scan every notice gets (issue 23: "no key, config or token in any notice"): what a leak would look
like — a WireGuard key, a config's lines, a QR image, a file-consent card, a claim link — plus the
secrets a test knows (a decoded private key, a consent token, a bot id, a webhook secret)."""
from __future__ import annotations

import re
from collections.abc import Iterable

WG_KEY = re.compile(r"[A-Za-z0-9+/]{42,43}=")  # a WireGuard key (private, preshared or public), as the notify tests scan for
MARKERS = ("PrivateKey", "PresharedKey", "[Interface]", "[Peer]", "Endpoint =", "data:image", "file.consent", "/claim/", "Bearer ")


def leaks(text: str, secrets: Iterable[str] = ()) -> list[str]:
    """What in `text` should not be there; [] when it is clean. Names a finding, never repeats a secret."""
    found = [marker for marker in MARKERS if marker in text]
    found += ["a WireGuard key" for _ in WG_KEY.finditer(text)]
    found += [f"known secret #{i}" for i, secret in enumerate(secrets) if secret and secret in text]
    return found
