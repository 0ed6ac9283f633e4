"""One-time claim links: how a config reaches a person on a platform that cannot send files privately.

The link carries a 256-bit token. The store keeps only its SHA-256 (to find the claim) and the
config sealed with AES-GCM under a key derived (HKDF) from the token itself: neither the database
nor the link alone reveals it, and it survives a restart. Claiming erases the sealed config.
"""
from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"vpn-bot claim v1"

if TYPE_CHECKING:
    from bot.store.ports import OneTimeConfigStore


class ClaimState(str, enum.Enum):
    READY = "ready"
    USED = "used"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Claim:
    token_hash: str
    session_id: str
    user: str  # UserKey text of the only person who may claim it
    tunnel_name: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None
    sealed: bytes | None = None

    def state(self, now: datetime) -> ClaimState:
        if self.used_at is not None:
            return ClaimState.USED
        if now >= self.expires_at or self.sealed is None:
            return ClaimState.EXPIRED
        return ClaimState.READY


def new_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key(token: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(token.encode())


def seal(token: str, plaintext: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(_key(token)).encrypt(nonce, plaintext.encode(), token_hash(token).encode())


def unseal(token: str, sealed: bytes) -> str:
    return AESGCM(_key(token)).decrypt(sealed[:12], sealed[12:], token_hash(token).encode()).decode()


async def hold(
    store: OneTimeConfigStore, *, session_id: str, user: str, tunnel_name: str, config: str, now: datetime, lifetime: timedelta, token: str | None = None
) -> str:
    """Seal `config` in the store for one person; returns the token, the only thing that opens it.

    A caller that can re-derive a secret token later (the web channel: from a server secret) passes it."""
    token = token or new_token()
    sealed = await asyncio.to_thread(seal, token, config)
    await store.add_claim(Claim(token_hash(token), session_id, user, tunnel_name, now, now + lifetime, sealed=sealed))
    return token


async def take(store: OneTimeConfigStore, token: str, now: datetime) -> tuple[Claim, str] | None:
    """Consume a ready claim, once: its record and the unsealed config; None if used, expired or unknown."""
    claim = await store.consume_claim(token_hash(token), now)
    if claim is None or claim.sealed is None:
        return None
    return claim, await asyncio.to_thread(unseal, token, claim.sealed)
