"""Teams authentication, both ways: the only place that knows how botbuilder and MSAL check and make tokens.

Inbound: `CloudAdapter` checks each activity's token against the Bot Framework's signing keys, which
`_SigningKeys` downloads off the event loop (botbuilder's own cache would block it); tokens the SDK
cannot read become 401. `_ReusingAuthentication` stops botbuilder from building msrest clients per turn.

`InboundTokens` remembers, for a few minutes, the channel tokens botbuilder has verified (the Bot
Framework sends the same token with many activities), so a plain message is not verified again;
what depends on the activity is checked on every request all the same.

Outbound: `BotToken` is the bot's own token for the Bot Connector, from MSAL (client credentials, or
the user-assigned managed identity), cached, acquired in a thread.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import msal
import requests
from botbuilder.integration.aiohttp import (
    CloudAdapter,
    ConfigurationBotFrameworkAuthentication,
    ConfigurationServiceClientCredentialFactory,
)
from botframework.connector.auth import AuthenticationConstants, JwtTokenExtractor, SkillValidation
from botframework.connector.auth.jwt_token_extractor import _OpenIdConfig
from jwt.algorithms import RSAAlgorithm

from bot.channels.teams.activities import host_of
from bot.channels.teams.config import TeamsConfig
from bot.channels.teams.connector import ConnectorError
from bot.channels.teams.inbound import auth_view

log = logging.getLogger(__name__)


class _AdapterSettings:
    """The attribute names ConfigurationBotFrameworkAuthentication reads. Empty APP_ID = auth off."""

    def __init__(self, c: TeamsConfig) -> None:
        self.APP_ID = c.app_id
        self.APP_PASSWORD = c.app_password
        # Without an app id (dev mode) only the SDK's MultiTenant path accepts an empty id.
        self.APP_TYPE = c.app_type if c.app_id else "MultiTenant"
        self.APP_TENANTID = c.tenant_id


class _SigningKeys:
    """Stands in for botbuilder's `_OpenIdMetadata` (botframework/connector/auth/jwt_token_extractor.py),
    which downloads the Bot Framework's keys with a blocking `requests.get` without a timeout on the
    event loop (daily, and for unknown key ids at most hourly), retries a failed download on every
    request, and raises IndexError for an unknown key id. Same contract (`await get(kid)`), but
    downloaded with aiohttp under a timeout, one download at a time, failures retried after a pause
    (old keys stay in use), and a key it does not know refused as unauthorised."""

    REFRESH = 24 * 3600.0
    UNKNOWN_KID_REFRESH = 3600.0
    RETRY_AFTER_FAILURE = 60.0

    def __init__(self, url: str, fetch_from: str, timeout: float) -> None:
        self.url, self.fetch_from, self.timeout = url, fetch_from, timeout
        self.keys: dict[str, _OpenIdConfig] = {}
        self.fetched_at = float("-inf")
        self._retry_at = 0.0
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    async def get(self, key_id: str | None) -> _OpenIdConfig:
        await self._refresh_if(lambda: time.monotonic() - self.fetched_at > self.REFRESH)
        if key_id not in self.keys:
            await self._refresh_if(lambda: key_id not in self.keys and time.monotonic() - self.fetched_at > self.UNKNOWN_KID_REFRESH)
        key = self.keys.get(key_id or "")
        if key is None:
            raise PermissionError("token signed with an unknown key")
        return key

    async def _refresh_if(self, stale: Callable[[], bool]) -> None:
        if not stale():
            return
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = asyncio.Lock()
            self._locks = {loop: lock}  # one loop per process (tests start new ones): forget old loops
        async with lock:
            if not stale() or time.monotonic() < self._retry_at:
                return
            try:
                self.keys = await self._download()
                self.fetched_at = time.monotonic()
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
                self._retry_at = time.monotonic() + self.RETRY_AFTER_FAILURE
                log.warning("Teams: could not download the Bot Framework signing keys from %s (%s); retrying in %.0fs",
                            host_of(self.fetch_from), type(exc).__name__, self.RETRY_AFTER_FAILURE)

    async def _download(self) -> dict[str, _OpenIdConfig]:
        async with asyncio.timeout(self.timeout), aiohttp.ClientSession(trust_env=True) as http:
            async with http.get(self.fetch_from) as resp:
                resp.raise_for_status()
                jwks_uri = (await resp.json(content_type=None))["jwks_uri"]
            async with http.get(jwks_uri) as resp:
                resp.raise_for_status()
                published = (await resp.json(content_type=None))["keys"]
        keys = {}
        for jwk in published:
            if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str) and jwk.get("kty") == "RSA":
                try:
                    keys[jwk["kid"]] = _OpenIdConfig(RSAAlgorithm.from_jwk(json.dumps(jwk)), list(jwk.get("endorsements") or []))
                except (jwt.PyJWTError, ValueError, TypeError):
                    log.warning("Teams: unusable signing key %s skipped", jwk["kid"][:40])
        if not keys:
            raise ValueError("no usable keys")
        return keys


def _use_signing_keys(config: TeamsConfig) -> None:
    """botbuilder keeps one key cache per metadata URL in `JwtTokenExtractor.metadataCache`
    (process-wide) and creates its blocking one only for a URL not in it: fill in ours first."""
    cache = getattr(JwtTokenExtractor, "metadataCache", None)
    if not isinstance(cache, dict):  # a botbuilder whose internals moved: refuse to run with blocking auth
        raise RuntimeError("botbuilder's JwtTokenExtractor.metadataCache is gone: check bot/channels/teams/auth.py _SigningKeys")
    for url, override in ((AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL, config.channel_keys_url),
                          (AuthenticationConstants.TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL, config.emulator_keys_url)):
        fetch_from = override or url
        current = cache.get(url)
        if not (isinstance(current, _SigningKeys) and current.fetch_from == fetch_from):
            cache[url] = _SigningKeys(url, fetch_from, config.auth_timeout)


def build_adapter(config: TeamsConfig) -> CloudAdapter:
    """botbuilder's CloudAdapter with our signing keys and one connector client per service URL."""
    settings = _AdapterSettings(config)
    if config.app_id and config.app_type.lower() == "multitenant":
        log.warning("MicrosoftAppType=MultiTenant: existing multi-tenant bot registrations keep working, but new "
                    "Azure Bot registrations must be SingleTenant or UserAssignedMSI")
    credentials = ConfigurationServiceClientCredentialFactory(settings)
    _use_signing_keys(config)
    return CloudAdapter(_ReusingAuthentication(settings, credentials))


class _TimeoutSession(requests.Session):
    """MSAL's HTTP client with a timeout on every call (MSAL's managed-identity path sets none)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


class BotToken:
    """The bot's own token for the Bot Connector from MSAL: client credentials (SingleTenant,
    MultiTenant) or the user-assigned managed identity. MSAL is synchronous and its constructor
    already does discovery I/O, so `acquire` (construction included) only ever runs in a thread."""

    def __init__(self, config: TeamsConfig) -> None:
        self._config = config
        self._client: Any = None
        self._cache: tuple[float, str] | None = None
        self._lock = asyncio.Lock()
        self._msal_cache = msal.TokenCache()  # MSAL's own cache, ours to clear (forget)

    def forget(self, token: str) -> None:
        """The Bot Connector refused `token` (401: revoked or rotated before it expired): the next
        `get` asks Entra afresh, past both caches. A token already replaced is left alone."""
        cached = self._cache
        if cached and cached[1] == token:
            self._cache = None
        kind = self._msal_cache.CredentialType.ACCESS_TOKEN
        for entry in list(self._msal_cache.search(kind)):
            if entry.get("secret") == token:
                self._msal_cache.remove_at(entry)

    async def get(self) -> str | None:
        """The bot's token for the Bot Connector, cached; MSAL is synchronous, so it runs in a thread."""
        if not self._config.app_id:
            return None  # dev mode: auth off both ways
        cached = self._cache
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self._lock:
            cached = self._cache
            if cached and cached[0] > time.monotonic():
                return cached[1]
            try:
                token, lifetime = await asyncio.to_thread(self.acquire)
            except Exception as exc:  # MSAL raises what it likes (ValueError, requests', its own): all mean no token
                log.warning("Teams: could not get the bot's token (%s: %s)", type(exc).__name__, str(exc)[:120])
                raise ConnectorError(0, "NoBotToken") from None
            # Kept until five minutes before it expires; MSAL keeps its own cache too.
            self._cache = (time.monotonic() + max(lifetime - 300, 30), token)
            return token

    def acquire(self) -> tuple[str, float]:
        """(token, seconds it stays valid)."""
        c = self._config
        resource = AuthenticationConstants.TO_CHANNEL_FROM_BOT_OAUTH_SCOPE
        if self._client is None:
            http = _TimeoutSession(c.auth_timeout)
            if c.app_type.lower() == "userassignedmsi":
                self._client = msal.ManagedIdentityClient(msal.UserAssignedManagedIdentity(client_id=c.app_id), http_client=http,
                                                          token_cache=self._msal_cache)
            else:
                tenant = c.tenant_id if c.app_type.lower() == "singletenant" else AuthenticationConstants.DEFAULT_CHANNEL_AUTH_TENANT
                self._client = msal.ConfidentialClientApplication(
                    c.app_id, client_credential=c.app_password, authority=c.login_url.rstrip("/") + "/" + tenant,
                    validate_authority=c.validate_authority, instance_discovery=c.validate_authority, http_client=http,
                    token_cache=self._msal_cache,
                )
        if isinstance(self._client, msal.ManagedIdentityClient):
            answer = self._client.acquire_token_for_client(resource=resource)
        else:
            answer = self._client.acquire_token_for_client(scopes=[resource + "/.default"])
        if "access_token" not in answer:
            raise PermissionError(f"no token: {answer.get('error') or 'unknown error'}")
        return answer["access_token"], float(answer.get("expires_in") or 600)


class _ReusingAuthentication(ConfigurationBotFrameworkAuthentication):
    """botbuilder builds a ConnectorClient and a TokenApiClient (each a msrest client with a requests
    session) for every inbound turn; this hands out one per service URL instead. The channel never
    uses them for its own calls, but the adapter insists on building them."""

    def __init__(self, settings: _AdapterSettings, credentials: ConfigurationServiceClientCredentialFactory) -> None:
        super().__init__(settings, credentials_factory=credentials)
        self._connectors: dict[tuple, Any] = {}
        self._token_clients: dict[str, Any] = {}

    async def authenticate_request(self, activity, auth_header):
        try:
            result = await super().authenticate_request(activity, auth_header)
        except PermissionError:
            raise
        except Exception as exc:  # a token the SDK cannot read or verify (alg, endorsement, signature): 401
            raise PermissionError(f"token refused ({type(exc).__name__})") from None
        if result.connector_factory is not None:
            result.connector_factory = _ReusingConnectorFactory(result.connector_factory, self._connectors)
        return result

    def create_connector_factory(self, claims_identity):
        return _ReusingConnectorFactory(super().create_connector_factory(claims_identity), self._connectors)

    async def create_user_token_client(self, claims_identity):
        key = getattr(claims_identity, "claims", {}).get("aud", "") if claims_identity else ""
        client = self._token_clients.get(key)
        if client is None:
            client = self._token_clients[key] = await super().create_user_token_client(claims_identity)
        return client


class _ReusingConnectorFactory:
    def __init__(self, inner, cache: dict) -> None:
        self._inner, self._cache = inner, cache

    async def create(self, service_url: str, audience: str | None = None):
        key = (service_url, audience, getattr(self._inner, "_app_id", None))
        client = self._cache.get(key)
        if client is None:
            client = self._cache[key] = await self._inner.create(service_url, audience)
        return client


# ----- inbound tokens already verified --------------------------------------------------------------------


@dataclass(frozen=True)
class _Verified:
    until: float  # time.time(): min(the token's exp, when it was verified + InboundTokens.TTL)
    channel_id: str  # the channel its signing key's endorsements were checked for
    service_url: str  # its serviceurl claim
    audience: str  # its aud claim
    issuer: str


class VerifiedTokens:
    """Channel tokens botbuilder verified, by the SHA-256 of the whole Authorization header (the token
    itself is not kept): a hit means these exact bytes, signature included, passed botbuilder's checks
    once. A hit is honoured only while the token is unexpired and at most `ttl` seconds after that
    check (a key the Bot Framework withdraws stops being trusted within it), and only if this activity's
    channel and service URL are the ones the token was verified for and its audience is still this
    bot's app id. Anything else is a miss: the caller asks botbuilder, which decides as before."""

    def __init__(self, app_id: str, *, ttl: float = 300.0, size: int = 1024, clock: Callable[[], float] = time.time) -> None:
        self.app_id, self.ttl, self.size, self._clock = app_id, ttl, size, clock
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()

    @staticmethod
    def _key(header: str) -> bytes:
        return hashlib.sha256(header.encode("utf-8", "surrogatepass")).digest()

    def accepts(self, header: str, channel_id: str, service_url: str) -> bool:
        entry = self._entries.get(self._key(header))
        if entry is None:
            return False
        if self._clock() >= entry.until:
            self._entries.pop(self._key(header), None)
            return False
        return (entry.channel_id == channel_id and entry.service_url == service_url and entry.audience == self.app_id
                and entry.issuer == AuthenticationConstants.TO_BOT_FROM_CHANNEL_TOKEN_ISSUER)

    def remember(self, header: str, channel_id: str, service_url: str, claims: dict) -> None:
        """After botbuilder accepted `header` for an activity of `channel_id` at `service_url`: kept only
        for a Bot Framework channel token naming that service URL and this bot (not the emulator's, not a skill's)."""
        exp = claims.get("exp")
        if (not self.app_id or not isinstance(exp, (int, float)) or isinstance(exp, bool)
                or claims.get(AuthenticationConstants.ISSUER_CLAIM) != AuthenticationConstants.TO_BOT_FROM_CHANNEL_TOKEN_ISSUER
                or claims.get(AuthenticationConstants.AUDIENCE_CLAIM) != self.app_id or claims.get("serviceurl") != service_url
                or SkillValidation.is_skill_claim(claims)):
            return
        until = min(float(exp), self._clock() + self.ttl)
        key = self._key(header)
        self._entries[key] = _Verified(until, channel_id, service_url, self.app_id, AuthenticationConstants.TO_BOT_FROM_CHANNEL_TOKEN_ISSUER)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class InboundTokens:
    """The token check of a plain message (bot/channels/teams/inbound.py): a token verified before
    (VerifiedTokens) for this channel, service URL and bot, else botbuilder's authentication as the
    adapter runs it. Raises PermissionError when refused."""

    def __init__(self, config: TeamsConfig, authentication: Any, verified: VerifiedTokens | None = None) -> None:
        self._authentication = authentication
        self.verified = verified or VerifiedTokens(config.app_id)

    async def check(self, data: dict, header: str) -> None:
        channel_id, service_url = data["channelId"], data["serviceUrl"]
        if not self.verified.app_id and not header:
            return  # no app id, auth off (dev mode): botbuilder gives a request without a token anonymous claims
        if header and self.verified.app_id and self.verified.accepts(header, channel_id, service_url):
            return
        result = await self._authentication.authenticate_request(auth_view(data), header)
        identity = getattr(result, "claims_identity", None)
        if header and identity is not None and identity.is_authenticated and isinstance(identity.claims, dict):
            self.verified.remember(header, channel_id, service_url, identity.claims)
