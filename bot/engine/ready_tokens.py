"""Tokens for the server's "my tunnel is up" callback, safe with any number of replicas (the route: bot/http/ready_callback.py).

Each provisioning attempt gets a random one-time token; only its SHA-256 is stored with the session
and only the server's boot config holds the token (in a URL). The callback may land on any replica:
it is verified against the store and recorded there (`server_up_at`), and the provisioning side,
wherever it runs, polls the store for it. Nothing depends on one process's memory or secret.
"""
from __future__ import annotations

import hashlib
import secrets
from typing import Awaitable, Callable

from bot.store.ports import SessionReader
from provisioner.wireguard import Secret

PATH = "/api/server-up"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_callback(public_url: str, session_id: str) -> tuple[Secret | None, str]:
    """(the URL for the server, the hash to store); (None, "") when the bot has no public URL."""
    if not public_url:
        return None, ""
    token = secrets.token_urlsafe(32)
    return Secret(f"{public_url.rstrip('/')}{PATH}/{session_id}/{token}"), token_hash(token)


def recorded(store: SessionReader, session_id: str) -> Callable[[], Awaitable[bool]]:
    """A check for the waiting side: has any replica recorded the callback?"""

    async def check() -> bool:
        s = await store.get(session_id)
        return s is not None and s.server_up_at is not None

    return check
