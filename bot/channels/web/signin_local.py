"""Local web accounts: PBKDF2-SHA256 password hashes in the store, HS256 bearer tokens with `iss` = local.

A login costs one hash whether or not the account exists (no enumeration by timing or by answer),
and is counted per account and per client address in the store, so the limits hold across replicas
and restarts. A token names the account and a fingerprint of its hash: removing the account or
changing its password ends every token issued before.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.channels.web.token_refusals import InvalidToken, jwt_reason
from bot.store.ports import LocalUser

ISSUER = "local"
AUDIENCE = "vpn-bot-web"
ALGORITHM = "HS256"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
TOKEN_LIFETIME = timedelta(hours=8)
WINDOW = timedelta(minutes=15)
ACCOUNT_ATTEMPTS = 5  # per account and window; a successful login resets it
ADDRESS_ATTEMPTS = 30  # per client address and window
MAX_PASSWORD = 1024
MIN_PASSWORD = 12


class LoginRefused(Exception):
    """Wrong email or password (never which)."""


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("too many attempts")
        self.retry_after = retry_after


def normalize_email(text: str) -> str:
    email = unicodedata.normalize("NFKC", text).strip().casefold()
    email.encode()  # a lone surrogate (valid in JSON) is no address, and the store could not encode it: ValueError
    local, at, domain = email.rpartition("@")
    if not (at and local and "." in domain) or len(email) > 254 or any(c.isspace() or ord(c) < 32 for c in email):
        raise ValueError("not an email address")
    return email


def hash_password(password: str, *, iterations: int = ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.urlsafe_b64decode(digest + "==")
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.urlsafe_b64decode(salt + "=="), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


# Logins hash here, not in asyncio's default executor: a burst of them must not hold up key
# generation, config sealing or QR rendering queued behind it there. Two workers: the machine's cores.
_HASHING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="password-hash")

# Checked when the account does not exist, so a miss costs what a hit costs.
_DUMMY_HASH = f"pbkdf2_sha256${ITERATIONS}${'A' * 22}${'A' * 43}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def derive_key(secret: str, purpose: str) -> bytes:
    """Independent keys from VPN_LOCAL_AUTH_SECRET for token signing and for sealing held configs."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"vpn-bot web {purpose} v1".encode()).derive(secret.encode())


def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LocalIdentity:
    email: str


class LocalAuth:
    def __init__(self, secret: str, store: Any, clock: Callable[[], datetime]) -> None:
        self._key = derive_key(secret, "local tokens")
        self._store = store
        self._clock = clock

    async def login(self, email: str, password: str, client: str) -> tuple[str, int]:
        """A token and its lifetime in seconds; LoginRefused or TooManyAttempts otherwise."""
        now = self._clock()
        try:
            email = normalize_email(email)
        except ValueError:
            email = ""
        if len(password) > MAX_PASSWORD:
            password = password[:MAX_PASSWORD]
        address_key, account_key = f"login-addr:{client}", f"login-acct:{email}"
        if await self._store.count_attempt(address_key, now, WINDOW) > ADDRESS_ATTEMPTS:
            raise TooManyAttempts(self._retry_after(now))
        if email and await self._store.count_attempt(account_key, now, WINDOW) > ACCOUNT_ATTEMPTS:
            raise TooManyAttempts(self._retry_after(now))
        user = await self._store.get_user(email) if email else None
        stored = user.password_hash if user else _DUMMY_HASH
        ok = await asyncio.get_running_loop().run_in_executor(_HASHING, verify_password, password, stored)
        if not (ok and user):
            raise LoginRefused()
        await self._store.clear_attempts(account_key)
        return self.issue(user, now), int(TOKEN_LIFETIME.total_seconds())

    def issue(self, user: LocalUser, now: datetime) -> str:
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": f"local:{user.email}",
            "email": user.email,
            "pwv": _fingerprint(user.password_hash),
            "iat": int(now.timestamp()),
            "exp": int((now + TOKEN_LIFETIME).timestamp()),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    async def verify(self, token: str) -> LocalIdentity:
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM], issuer=ISSUER, audience=AUDIENCE,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "email", "pwv"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(jwt_reason(exc), str(exc)) from None
        email = claims["email"]
        if not isinstance(email, str) or claims["sub"] != f"local:{email}":
            raise InvalidToken("malformed", "malformed subject")
        user = await self._store.get_user(email)
        if user is None or not hmac.compare_digest(str(claims["pwv"]), _fingerprint(user.password_hash)):
            raise InvalidToken("account_changed", "account removed or password changed")
        return LocalIdentity(email)

    def _retry_after(self, now: datetime) -> int:
        seconds = int(WINDOW.total_seconds())
        return seconds - int(now.timestamp()) % seconds
