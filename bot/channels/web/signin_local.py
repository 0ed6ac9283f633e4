"""Local web accounts: PBKDF2-SHA256 password hashes in the store, HS256 bearer tokens with `iss` = local.

A login costs one hash whether or not the account exists (no enumeration by timing or by answer).
Sign-in limits (docs/web.md, "Sign-in limits") are counted in the store, so they hold across replicas
and restarts, and are chosen so that a stranger cannot hold them against a user:

* per client address (an IPv6 /64): ADDRESS_ATTEMPTS per window, whatever the accounts;
* per account and address: PAIR_ATTEMPTS per window; a successful sign-in resets it;
* per account from addresses it has not signed in from within SIGN_IN_MEMORY: ACCOUNT_ATTEMPTS per
  window. A flood from strangers' addresses uses this up, and the account's own recent addresses
  are exempt from it: the right password from where the user signed in before still works.

An exhausted window is answered at once (429, before any hashing; once a process has seen it used
up, without asking the store again); one account's hashes run one at a time per process, so a flood
on it leaves the other hashing worker to everyone else. A token names the account and a fingerprint of its hash: removing the account or
changing its password ends every token issued before.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Callable

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.channels.web.token_refusals import InvalidToken, jwt_reason
from bot.store.ports import SIGN_IN_MEMORY, LocalUser

ISSUER = "local"
AUDIENCE = "vpn-bot-web"
ALGORITHM = "HS256"
ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
TOKEN_LIFETIME = timedelta(hours=8)
WINDOW = timedelta(minutes=15)
ADDRESS_ATTEMPTS = 30  # per client address (IPv6: per /64) and window, whatever the accounts
PAIR_ATTEMPTS = 5  # per account and address and window; a successful login resets it
ACCOUNT_ATTEMPTS = 5  # per account and window, from addresses it has not signed in from recently
MAX_EMAIL = 254  # RFC 5321's path limit, after normalisation; longer is refused before anything is stored
MAX_PASSWORD = 1024
MIN_PASSWORD = 12
SPENT_MEMORY = 4096  # used-up counters (and accounts' addresses) remembered per process, then the stale ones forgotten
KNOWN_FOR_SECONDS = 60.0  # how long this process reuses an account's remembered addresses


class LoginRefused(Exception):
    """Wrong email or password (never which)."""


class BadEmail(LoginRefused, ValueError):
    """Not an email address (or longer than MAX_EMAIL): a client error, said before anything is counted or stored."""


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("too many attempts")
        self.retry_after = retry_after


def _window(now: datetime) -> int:
    seconds = int(WINDOW.total_seconds())
    return int(now.timestamp()) // seconds


def normalize_email(text: str) -> str:
    """The account's key, or BadEmail (a ValueError): the one check `users add` and a login share."""
    if len(text) > 4 * MAX_EMAIL:  # NFKC may shorten, but not this much: refused before the work
        raise BadEmail(f"an email address has at most {MAX_EMAIL} characters")
    email = unicodedata.normalize("NFKC", text).strip().casefold()
    try:
        email.encode()  # a lone surrogate (valid in JSON) is no address
    except UnicodeEncodeError:
        raise BadEmail("not an email address") from None
    if len(email) > MAX_EMAIL:
        raise BadEmail(f"an email address has at most {MAX_EMAIL} characters")
    local, at, domain = email.rpartition("@")
    if not (at and local and "." in domain) or any(c.isspace() or ord(c) < 32 for c in email):
        raise BadEmail("not an email address")
    return email


def address_bucket(client: str) -> str:
    """What the per-address limits count: the address, or for IPv6 its /64 (one host's usual share)."""
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client[:100].encode("utf-8", "replace").decode()  # not an address (a unix socket): as it is, storable
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


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


class _Utf8Json(json.JSONEncoder):
    """Claims as UTF-8, not \\u escapes: a 254-character address of emoji made a token of over 8 KiB
    (12 bytes a character, twice), past the request-header limit, so its owner signed in and every
    request was refused (issue 18.6). As UTF-8 it stays under 3 KiB."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "ensure_ascii": False})


def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


class _KeyedLocks:
    """An asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, list] = {}  # key -> [lock, holders and waiters]

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]


@dataclass(frozen=True)
class LocalIdentity:
    email: str


class LocalAuth:
    def __init__(self, secret: str, store: Any, clock: Callable[[], datetime]) -> None:
        self._key = derive_key(secret, "local tokens")
        self._store = store
        self._clock = clock
        # Scheduling aids in this process only; every limit is decided in the store:
        self._counting = _KeyedLocks()  # one take per counter at a time, so a flood meets a used-up window at once
        self._hashing = _KeyedLocks()  # one hash per account at a time: a flood on one account uses one hashing worker
        self._spent: dict[str, int] = {}  # counters this process saw used up -> their window (a used-up window stays so)
        self._known: dict[str, tuple[float, frozenset[str]]] = {}  # account -> (read at, its remembered addresses)

    async def login(self, email: str, password: str, client: str) -> tuple[str, int]:
        """A token and its lifetime in seconds; LoginRefused (BadEmail for no address) or TooManyAttempts otherwise."""
        now = self._clock()
        email = normalize_email(email)  # BadEmail: refused before anything is counted
        if len(password) > MAX_PASSWORD:
            password = password[:MAX_PASSWORD]
        store, address = self._store, address_bucket(client)
        pair_key = f"login-pair:{len(email)}:{email}|{address}"
        limits = [(pair_key, PAIR_ATTEMPTS), (f"login-addr:{address}", ADDRESS_ATTEMPTS)]
        if address not in await self._known_addresses(email, now):
            limits.insert(0, (f"login-acct:{email}", ACCOUNT_ATTEMPTS))  # strangers' limit; the account's own addresses skip it
        window = _window(now)
        if any(self._spent.get(key) == window for key, _ in limits):
            raise TooManyAttempts(self._retry_after(now))
        for key, limit in limits:
            if not await self._take(key, limit, now, window):
                raise TooManyAttempts(self._retry_after(now))
        user = await store.get_user(email)
        stored = user.password_hash if user else _DUMMY_HASH
        async with self._hashing.hold(email):
            ok = await asyncio.get_running_loop().run_in_executor(_HASHING, verify_password, password, stored)
        if not (ok and user):
            raise LoginRefused()
        await asyncio.gather(store.clear_attempts(pair_key, now, WINDOW), store.remember_sign_in(email, address, now))
        if email in self._known:
            read_at, addresses = self._known[email]
            self._known[email] = (read_at, addresses | {address})
        return self.issue(user, now), int(TOKEN_LIFETIME.total_seconds())

    async def _known_addresses(self, account: str, now: datetime) -> frozenset[str]:
        """Where the account signed in from lately: one store query per account and KNOWN_FOR_SECONDS in
        this process (a flood of strangers on one account reads it once). A sign-in on another replica
        shows here within that time."""
        async with self._counting.hold("known:" + account):
            cached = self._known.get(account)
            if cached is not None and time.monotonic() - cached[0] < KNOWN_FOR_SECONDS:
                return cached[1]
            addresses = await self._store.sign_in_addresses(account, now - SIGN_IN_MEMORY)
            if len(self._known) >= SPENT_MEMORY:
                self._known = {a: c for a, c in self._known.items() if time.monotonic() - c[0] < KNOWN_FOR_SECONDS}
            self._known[account] = (time.monotonic(), addresses)
            return addresses

    async def _take(self, key: str, limit: int, now: datetime, window: int) -> bool:
        async with self._counting.hold(key):
            if self._spent.get(key) == window:
                return False
            if await self._store.take_attempt(key, now, WINDOW, limit):
                return True
            if key.startswith("login-pair:"):
                return False  # a success clears this one (on any replica): not remembered as used up
            if len(self._spent) >= SPENT_MEMORY:
                self._spent = {k: w for k, w in self._spent.items() if w == window}
            self._spent[key] = window
            return False

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
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, json_encoder=_Utf8Json)

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

    @staticmethod
    def _retry_after(now: datetime) -> int:
        seconds = int(WINDOW.total_seconds())
        return seconds - int(now.timestamp()) % seconds
