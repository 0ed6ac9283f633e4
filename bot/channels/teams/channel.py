"""Microsoft Teams through the Bot Framework SDK: the only module that imports botbuilder.

Inbound: `CloudAdapter` at `POST /api/messages` checks the token (against the Bot Framework's keys,
which `_SigningKeys` downloads off the event loop) and parses the activity; a
`TeamsActivityHandler` hands it to this channel, which answers the HTTP request at once and does
the work (member lookup, command, replies) in a tracked task, so an ack never waits on Teams.

Outbound: every call the bot makes to the Bot Connector (send, reply, update, delete, member
lookup, 1:1 conversation) goes through `ConnectorClient` below, on the app's own aiohttp session
with one token cache, instead of botbuilder's per-turn msrest clients (which cost more CPU than the
whole bot; see docs/decisions.md). One retry rule covers every call: 412/429 are retried always
(refused before processing); 500/502/503/504, timeouts and dropped connections only for calls that
are safe to repeat (GET, PUT, DELETE, creating a 1:1 chat); 403 never (the user blocked the bot).

Configs go privately: in a personal chat the QR card and a file-consent card; from a group chat or
channel, in a 1:1 chat the bot opens with the requester, checked before anything is provisioned.
Until the user allows the file, its content is sealed in the store under a token only the consent
card carries, and only its owner, from its tenant, can have it uploaded to an allowed OneDrive /
SharePoint host. At teardown the QR card is replaced by an "expired" card.
"""
from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import quote, urlsplit

import aiohttp
import jwt
import msal
import requests
from aiohttp import web
from botbuilder.core import InvokeResponse, TurnContext
from botbuilder.core.teams import TeamsActivityHandler
from botbuilder.integration.aiohttp import (
    CloudAdapter,
    ConfigurationBotFrameworkAuthentication,
    ConfigurationServiceClientCredentialFactory,
)
from botbuilder.schema import Activity, AdaptiveCardInvokeResponse
from botframework.connector.auth import AuthenticationConstants, JwtTokenExtractor
from botframework.connector.auth.jwt_token_extractor import _OpenIdConfig
from jwt.algorithms import RSAAlgorithm

from bot import one_time_configs
from bot.backoff import retry_delay
from bot.one_time_configs import Claim
from bot.messages import ConversationRef, Identity, Incoming, InvalidIdentity, UserKey
from bot.channels.teams.config import TeamsConfig
from bot.channels.deps import ChatDeps
from bot.replies import ChannelDefaults, ConfigDelivery, DeliveryError
from cards.adaptive import render_adaptive
from cards.model import Card
from cards.text import render_card_text

log = logging.getLogger(__name__)
RETRY_ALWAYS = frozenset({412, 429})  # refused before processing: any call may be repeated
RETRY_IF_IDEMPOTENT = frozenset({500, 502, 503, 504})  # may have been processed: only calls safe to repeat
ADAPTIVE = "application/vnd.microsoft.card.adaptive"
FILE_CONSENT = "application/vnd.microsoft.teams.card.file.consent"
FILE_INFO = "application/vnd.microsoft.teams.card.file.info"
SEND_SPACING = 0.15  # Teams allows 7 sends per second per conversation
QR_RECORD = "teams-qr:"  # claims-table key prefix of "where the QR card went" (never a token hash: those are hex)
INSTALL_HELP = (
    "the VPN bot app is not installed for you personally, so I cannot open a private chat with you. "
    "To install it, in Teams select Apps (left rail), search for the VPN bot and select Add (\"Add for me\"); "
    "or select my name in this chat, then Chat. Then send /vpn start again, here or in our private chat"
)


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
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, TypeError) as exc:
                self._retry_at = time.monotonic() + self.RETRY_AFTER_FAILURE
                log.warning("Teams: could not download the Bot Framework signing keys from %s (%s); retrying in %.0fs",
                            _host(self.fetch_from), type(exc).__name__, self.RETRY_AFTER_FAILURE)

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
        raise RuntimeError("botbuilder's JwtTokenExtractor.metadataCache is gone: check bot/channels/teams/channel.py _SigningKeys")
    for url, override in ((AuthenticationConstants.TO_BOT_FROM_CHANNEL_OPENID_METADATA_URL, config.channel_keys_url),
                          (AuthenticationConstants.TO_BOT_FROM_EMULATOR_OPENID_METADATA_URL, config.emulator_keys_url)):
        fetch_from = override or url
        current = cache.get(url)
        if not (isinstance(current, _SigningKeys) and current.fetch_from == fetch_from):
            cache[url] = _SigningKeys(url, fetch_from, config.auth_timeout)


class _TimeoutSession(requests.Session):
    """MSAL's HTTP client with a timeout on every call (MSAL's managed-identity path sets none)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


class _BotToken:
    """The bot's own token for the Bot Connector from MSAL: client credentials (SingleTenant,
    MultiTenant) or the user-assigned managed identity. MSAL is synchronous and its constructor
    already does discovery I/O, so `acquire` (construction included) only ever runs in a thread."""

    def __init__(self, config: TeamsConfig) -> None:
        self._config = config
        self._client: Any = None

    def acquire(self) -> tuple[str, float]:
        """(token, seconds it stays valid)."""
        c = self._config
        resource = AuthenticationConstants.TO_CHANNEL_FROM_BOT_OAUTH_SCOPE
        if self._client is None:
            http = _TimeoutSession(c.auth_timeout)
            if c.app_type.lower() == "userassignedmsi":
                self._client = msal.ManagedIdentityClient(msal.UserAssignedManagedIdentity(client_id=c.app_id), http_client=http)
            else:
                tenant = c.tenant_id if c.app_type.lower() == "singletenant" else AuthenticationConstants.DEFAULT_CHANNEL_AUTH_TENANT
                self._client = msal.ConfidentialClientApplication(
                    c.app_id, client_credential=c.app_password, authority=c.login_url.rstrip("/") + "/" + tenant,
                    validate_authority=c.validate_authority, instance_discovery=c.validate_authority, http_client=http,
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

    async def create(self, service_url: str, audience: str = None):
        key = (service_url, audience, getattr(self._inner, "_app_id", None))
        client = self._cache.get(key)
        if client is None:
            client = self._cache[key] = await self._inner.create(service_url, audience)
        return client


class ConnectorError(Exception):
    """A Bot Connector call failed: `status` 0 for a network failure or timeout."""

    def __init__(self, status: int, code: str = "", message: str = "") -> None:
        super().__init__(f"{status} {code}".strip())
        self.status, self.code, self.message = status, code, message


class SendBlocked(ConnectorError):
    """403: the user blocked or removed the bot; retrying cannot help."""


class ConnectorClient:
    """The bot's outbound REST calls (Bot Connector v3 and the OneDrive upload) on one aiohttp session."""

    def __init__(self, http: aiohttp.ClientSession, token: Callable[[], Awaitable[str | None]], config: TeamsConfig) -> None:
        self._http = http
        self._token = token
        self._config = config
        self._slots = asyncio.Semaphore(config.max_concurrent_calls)

    async def call(self, method: str, service_url: str, path: str, *, body: Any = None, idempotent: bool) -> Any:
        url = service_url.rstrip("/") + "/v3/" + path
        headers = {"Content-Type": "application/json"}
        token = await self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        return await self.request(method, url, data=data, headers=headers, idempotent=idempotent)

    async def request(self, method: str, url: str, *, data: bytes | None, headers: dict, idempotent: bool) -> Any:
        """One call under the one retry rule; returns the parsed JSON answer (None when empty)."""
        attempts = self._config.send_attempts
        for attempt in range(attempts):
            status, retry_after, failure = 0, "", None
            try:
                async with self._slots:
                    async with self._http.request(method, url, data=data, headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=self._config.call_timeout)) as resp:
                        raw = await resp.read()
                        status, retry_after = resp.status, resp.headers.get("Retry-After", "")
                        if status < 300:
                            try:
                                return json.loads(raw) if raw else None
                            except ValueError:
                                return None
                        failure = _error_of(status, raw)
            except aiohttp.ClientConnectorError:
                failure = ConnectorError(0, "ConnectionFailed")  # nothing was sent: safe to repeat
                sent = False
            except (aiohttp.ClientError, asyncio.TimeoutError):
                failure = ConnectorError(0, "NoAnswer")  # it may have arrived
                sent = True
            else:
                sent = True
            assert failure is not None
            if isinstance(failure, SendBlocked):
                raise failure
            retry = status in RETRY_ALWAYS or not sent or (idempotent and (status in RETRY_IF_IDEMPOTENT or status == 0))
            if not retry or attempt + 1 == attempts:
                raise failure
            delay = retry_delay(attempt, self._config.backoff, retry_after)
            log.info("Teams: %s %s answered %s; retrying in %.1fs", method, urlsplit(url).path[:60], status or failure.code, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _error_of(status: int, raw: bytes) -> ConnectorError:
    code = message = ""
    try:
        err = json.loads(raw).get("error") or {}
        code, message = str(err.get("code") or "")[:80], str(err.get("message") or "")[:200]
    except (ValueError, AttributeError):
        pass
    if status == 403 and code != "BotNotInConversationRoster":
        return SendBlocked(status, code, message)
    return ConnectorError(status, code, message)


# ----- what comes in ---------------------------------------------------------------------------------

class BadActivity(ValueError):
    """A request body the SDK must never see; the text is logged (one line) and answered with 400."""


def _has_surrogate(data: Any) -> bool:
    """Lone surrogates (JSON `\\ud800`) anywhere: they break every encoder downstream."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= ch <= "\udfff" for ch in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_activity(data: Any) -> None:
    """Refuse what Teams never sends before the SDK or our handlers choke on it."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str) or not data.get("type"):
        raise BadActivity("not an activity")
    if _has_surrogate(data):
        raise BadActivity("lone surrogate in a string")
    for key in ("from", "recipient", "conversation"):
        part = data.get(key)
        if not isinstance(part, dict) or not isinstance(part.get("id"), str) or not part["id"]:
            raise BadActivity(f"missing or malformed {key!r}")
    service_url = data.get("serviceUrl")
    if not isinstance(service_url, str) or not service_url.startswith(("http://", "https://")) or not _host(service_url):
        raise BadActivity("missing or malformed serviceUrl")  # botbuilder would fall back to the public connector
    if "id" in data and not isinstance(data["id"], str):
        raise BadActivity("malformed activity id")
    if data.get("channelData") is not None and not isinstance(data["channelData"], dict):
        raise BadActivity("malformed channelData")
    if data["type"] == "invoke" and data.get("name") == "fileConsent/invoke":
        value = data.get("value")
        if not isinstance(value, dict) or value.get("action") not in ("accept", "decline") or not isinstance(value.get("context"), dict):
            raise BadActivity("malformed fileConsent/invoke value")
        if not isinstance(value["context"].get("token", ""), str):
            raise BadActivity("malformed fileConsent/invoke token")
        if value["action"] == "accept":
            info = value.get("uploadInfo")
            if not isinstance(info, dict) or not all(isinstance(info.get(k), str) and info.get(k) for k in ("uploadUrl", "name")):
                raise BadActivity("malformed fileConsent/invoke uploadInfo")
            if any(k in info and not isinstance(info[k], str) for k in ("contentUrl", "uniqueId", "fileType")):
                raise BadActivity("malformed fileConsent/invoke uploadInfo")


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _tenant_of(activity: Activity) -> str:
    data = activity.channel_data or {}
    tenant = data.get("tenant") if isinstance(data, dict) else None
    return str((tenant or {}).get("id") or "") if isinstance(tenant, dict) else ""


def _is_personal(activity: Activity) -> bool:
    """Fail closed: only a conversation Teams calls personal, and not a group, is private."""
    conversation = activity.conversation
    if conversation is None:
        return False
    return conversation.conversation_type == "personal" and conversation.is_group is not True


def _shared_type(activity: Activity) -> str:
    kind = activity.conversation.conversation_type if activity.conversation else None
    return kind if kind in ("groupChat", "channel") else "unknown"


def _conversation(activity: Activity) -> ConversationRef:
    reference = TurnContext.get_conversation_reference(activity).serialize()
    return ConversationRef(
        "teams",
        {
            "reference": reference,
            "tenant_id": _tenant_of(activity),
            "user_id": activity.from_property.id if activity.from_property else "",
            "conversation_type": "personal" if _is_personal(activity) else _shared_type(activity),
        },
    )


def upload_url_allowed(url: str, hosts: tuple[str, ...], *, dev_mode: bool = False) -> bool:
    """https on an allowed OneDrive/SharePoint host (`*.sharepoint.com` matches its subdomains);
    dev mode also takes http to a loopback host on the list (a local fake)."""
    host = _host(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not host or not any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in hosts):
        return False
    if scheme == "https":
        return True
    return dev_mode and scheme == "http" and host in ("127.0.0.1", "localhost", "::1")


# ----- the channel -----------------------------------------------------------------------------------

class TeamsChannel(ChannelDefaults):
    name = "teams"

    def __init__(self, config: TeamsConfig) -> None:
        self.config = config
        self._deps: ChatDeps | None = None
        self._adapter: CloudAdapter | None = None
        self._client: ConnectorClient | None = None
        self._credentials: ConfigurationServiceClientCredentialFactory | None = None
        self._bot_token = _BotToken(config)
        self._token_cache: tuple[float, str] | None = None
        self._token_lock = asyncio.Lock()
        self._handler = _Handler(self)
        self._emails: dict[str, tuple[float, str | None]] = {}
        self._private_chats: dict[tuple[str, str], str] = {}  # (service url, user id) -> 1:1 conversation id
        self._last_send: dict[str, float] = {}
        self._send_locks: dict[str, asyncio.Lock] = {}
        self._latest_progress: dict[str, tuple[ConversationRef, str]] = {}

    # ----- lifecycle and route ------------------------------------------------------------------------

    async def attach(self, deps: ChatDeps) -> None:
        self._deps = deps
        settings = _AdapterSettings(self.config)
        if self.config.app_id and self.config.app_type.lower() == "multitenant":
            log.warning("MicrosoftAppType=MultiTenant: existing multi-tenant bot registrations keep working, but new "
                        "Azure Bot registrations must be SingleTenant or UserAssignedMSI")
        self._credentials = ConfigurationServiceClientCredentialFactory(settings)
        _use_signing_keys(self.config)
        self._adapter = CloudAdapter(_ReusingAuthentication(settings, self._credentials))
        self._adapter.on_turn_error = self._on_turn_error
        self._client = ConnectorClient(deps.http, self._token, self.config)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/messages", self._messages)

    @property
    def deps(self) -> ChatDeps:
        assert self._deps is not None, "Teams channel used before it was attached"
        return self._deps

    @property
    def client(self) -> ConnectorClient:
        assert self._client is not None, "Teams channel used before the runtime started"
        return self._client

    async def _token(self) -> str | None:
        """The bot's token for the Bot Connector, cached; MSAL is synchronous, so it runs in a thread."""
        if not self.config.app_id:
            return None  # dev mode: auth off both ways
        cached = self._token_cache
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self._token_lock:
            cached = self._token_cache
            if cached and cached[0] > time.monotonic():
                return cached[1]
            try:
                token, lifetime = await asyncio.to_thread(self._bot_token.acquire)
            except Exception as exc:  # MSAL raises what it likes (ValueError, requests', its own): all mean no token
                log.warning("Teams: could not get the bot's token (%s: %s)", type(exc).__name__, str(exc)[:120])
                raise ConnectorError(0, "NoBotToken") from None
            # Kept until five minutes before it expires; MSAL keeps its own cache too.
            self._token_cache = (time.monotonic() + max(lifetime - 300, 30), token)
            return token

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        """Invalid or oversized requests get 4xx before the SDK sees them; the SDK checks the token."""
        if "application/json" not in request.headers.get("Content-Type", ""):
            return web.Response(status=415, text="expected application/json")
        # read() caches the body for the SDK's own request.json(), and the app's client_max_size
        # (bot/http/app.py, 256 KiB) answers anything larger with 413.
        body = await request.read()
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            log.warning("Teams: malformed JSON (%d bytes) refused", len(body))
            return web.Response(status=400, text="malformed JSON")
        try:
            check_activity(data)
            value = data.get("value")
            if data.get("name") == "fileConsent/invoke" and value["action"] == "accept":
                url = value["uploadInfo"]["uploadUrl"]
                if not upload_url_allowed(url, self.config.upload_hosts, dev_mode=self.config.dev_mode):
                    host = _host(url) or "?"
                    raise BadActivity(f"file upload URL on {host[:80]} refused (https on TEAMS_UPLOAD_HOSTS only)")
        except BadActivity as exc:
            log.warning("Teams: activity refused: %s", exc)
            return web.Response(status=400, text=str(exc))
        assert self._adapter is not None
        try:
            return await self._adapter.process(request, self._handler)
        except web.HTTPException:
            raise
        except jwt.PyJWTError:
            return web.Response(status=401, text="invalid token")  # a malformed bearer token
        except Exception as exc:  # the bot's own errors end in on_turn_error: what is left is bad input
            log.warning("Teams: activity refused (%s)", type(exc).__name__)
            return web.Response(status=400, text="invalid activity")

    async def _on_turn_error(self, turn_context: TurnContext, error: Exception) -> None:
        log.error("Teams turn failed", exc_info=error)

    def _later(self, activity: Activity, work: Callable[[], Awaitable[None]]) -> None:
        """Answer Teams now; the work (lookups, the command, replies) runs as a tracked task."""
        name = f"teams:{activity.type}:{activity.id or uuid.uuid4().hex}"
        try:
            self.deps.runner.start(name, work)
        except RuntimeError:
            log.warning("Teams: shutting down; activity %s dropped", (activity.id or "")[:40])

    # ----- sending ----------------------------------------------------------------------------------

    async def _post(self, conv: ConversationRef, activity: dict, *, update_id: str | None = None) -> str | None:
        """Send (or update) one activity in a conversation, spaced per conversation; returns its id."""
        ref = conv.data["reference"]
        service_url = ref.get("serviceUrl") or ""
        conversation_id = (ref.get("conversation") or {}).get("id") or ""
        if not service_url or not conversation_id:
            raise ConnectorError(0, "NoConversation", "the conversation reference has no service URL or id")
        activity = {
            **activity,
            "conversation": {"id": conversation_id},
            "from": ref.get("bot"),
            "recipient": ref.get("user"),
            "channelId": ref.get("channelId") or "msteams",
            "serviceUrl": service_url,
        }
        base = f"conversations/{quote(conversation_id, safe='')}/activities"
        lock = self._send_locks.setdefault(conversation_id, asyncio.Lock())
        async with lock:
            wait = SEND_SPACING - (time.monotonic() - self._last_send.get(conversation_id, 0.0))
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                if update_id:
                    activity["id"] = update_id
                    await self.client.call("PUT", service_url, f"{base}/{quote(update_id, safe='')}", body=activity, idempotent=True)
                    return update_id
                reply_to = ref.get("activityId")
                if reply_to:
                    activity["replyToId"] = reply_to
                    answer = await self.client.call("POST", service_url, f"{base}/{quote(reply_to, safe='')}", body=activity, idempotent=False)
                else:
                    answer = await self.client.call("POST", service_url, base, body=activity, idempotent=False)
            except SendBlocked:
                log.warning("Teams: conversation %s refuses messages (403, e.g. MessageWritesBlocked); not retrying", conversation_id[:40])
                raise
            finally:
                self._last_send[conversation_id] = time.monotonic()
        return (answer or {}).get("id") if isinstance(answer, dict) else None

    async def _delete(self, conv: ConversationRef, activity_id: str) -> None:
        ref = conv.data["reference"]
        conversation_id = ref["conversation"]["id"]
        path = f"conversations/{quote(conversation_id, safe='')}/activities/{quote(activity_id, safe='')}"
        try:
            await self.client.call("DELETE", ref["serviceUrl"], path, idempotent=True)
        except ConnectorError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    async def send_text(self, conv: ConversationRef, text: str) -> None:
        await self._post(conv, {"type": "message", "text": text})

    async def send_card(self, conv: ConversationRef, card: Card) -> str | None:
        return await self._post(conv, _card_activity(card))  # the activity id: update_card replaces it

    async def update_card(self, conv: ConversationRef, handle: str, card: Card) -> bool:
        """PUT the activity (issue 22: every approver's card becomes the outcome), from any replica."""
        await self._post(conv, _card_activity(card), update_id=handle)
        return True

    async def send_progress(self, conv: ConversationRef, text: str, handle: str | None) -> str | None:
        """One card, updated in place (PUT) as the steps go by. Updates do not hold up the work: the
        newest text waits in one slot per card, and one task sends it; steps that come faster than
        Teams answers are never sent (nobody would have seen them)."""
        if not handle:
            return await self._post(conv, _card_activity(Card(title="VPN", lines=(text,))))
        self._latest_progress[handle] = (conv, text)
        try:
            self.deps.runner.start(f"teams-progress:{handle}", lambda: self._flush_progress(handle))
        except RuntimeError:  # shutting down: this one update is lost, the next message says more
            self._latest_progress.pop(handle, None)
        return handle

    async def _flush_progress(self, handle: str) -> None:
        while handle in self._latest_progress:
            conv, text = self._latest_progress.pop(handle)
            try:
                await self._post(conv, _card_activity(Card(title="VPN", lines=(text,))), update_id=handle)
            except ConnectorError as exc:
                log.info("Teams: progress update failed (%s)", exc.status or exc.code)

    def can_deliver_privately(self, conv: ConversationRef) -> bool:
        return True  # personal chat, or a 1:1 chat the bot opens (check_private_delivery asks Teams)

    async def check_private_delivery(self, conv: ConversationRef, recipient: Identity) -> str | None:
        """Before anything is provisioned: can the bot reach this person in a 1:1 chat? None if yes,
        else the sentence that says why not (and, when that is the reason, how to install the app)."""
        if conv.data.get("conversation_type") == "personal":
            return None
        try:
            await self._open_private_chat(conv)
        except DeliveryError as exc:
            log.info("Teams: no private chat with %s: %s", recipient.key, str(exc)[:80])
            return f"I cannot send you a config privately: {exc}."
        return None

    async def deliver_config(self, conv: ConversationRef, recipient: Identity, delivery: ConfigDelivery) -> str:
        personal = conv.data.get("conversation_type") == "personal"
        target = conv if personal else await self._open_private_chat(conv)
        qr_uri = "data:image/png;base64," + base64.b64encode(delivery.qr_png).decode()
        card = Card(
            title="Your VPN config",
            lines=(
                "In the WireGuard app: + → Scan from QR code. Or allow the file below and import it.",
                delivery.expires_note,
            ),
        )
        qr_activity = {"type": "message", "attachments": [{"contentType": ADAPTIVE, "content": render_adaptive(card, image_data_uri=qr_uri)}]}
        store, now = self.deps.configs, self.deps.clock()
        try:
            qr_id = await self._post(target, qr_activity)
            del qr_activity, qr_uri
            sent = [qr_id] if qr_id else []
            data = delivery.config.reveal().encode()
            token = await one_time_configs.hold(
                store, session_id=delivery.session_id, user=str(recipient.key), tunnel_name=delivery.tunnel_name,
                config=delivery.config.reveal(), now=now, lifetime=timedelta(minutes=self.config.consent_minutes),
            )
            consent = {
                "description": "Your WireGuard configuration (holds your private key: keep it to yourself).",
                "sizeInBytes": len(data),
                "acceptContext": {"token": token, "session": delivery.session_id},
                "declineContext": {"token": token, "session": delivery.session_id},
            }
            consent_id = await self._post(target, {"type": "message", "attachments": [
                {"contentType": FILE_CONSENT, "name": f"{delivery.tunnel_name}.conf", "content": consent}
            ]})
            if consent_id:
                sent.append(consent_id)
            await self._remember_sent(delivery.session_id, str(recipient.key), delivery.tunnel_name, target, sent)
        except SendBlocked:
            raise DeliveryError("Teams refuses messages to you from the bot (it may be blocked)") from None
        except ConnectorError as exc:
            raise DeliveryError(f"Teams did not accept the message ({exc.status or exc.code}); please try again in a minute") from None
        if personal:
            return "Your config is above: scan the QR code, or allow the file."
        return "I sent your config to you in a private chat with me."

    async def _remember_sent(self, session_id: str, user: str, tunnel: str, target: ConversationRef, activity_ids: list[str]) -> None:
        """Where the QR card went, in the shared store (teardown may run on another replica)."""
        store, now = self.deps.configs, self.deps.clock()
        record = json.dumps({"conversation": dict(target.data), "activities": activity_ids}).encode()
        for n in range(10):
            key = f"{QR_RECORD}{session_id}:{n}"
            if await store.get_claim(key) is None:
                await store.add_claim(Claim(key, session_id, user, tunnel, now, now + timedelta(days=8), sealed=record))
                return
        log.warning("Teams: session %s delivered too often to remember where", session_id)

    async def retract_config(self, conv: ConversationRef, session_id: str, handle: str | None = None) -> None:
        """At teardown: the QR card becomes an "expired" card and the consent card goes, so the private
        key does not stay in the chat. Called before the session's claims are purged."""
        store = self.deps.configs
        for n in range(10):
            record = await store.get_claim(f"{QR_RECORD}{session_id}:{n}")
            if record is None:
                return
            if not record.sealed:
                continue
            try:
                saved = json.loads(record.sealed)
                target = ConversationRef("teams", saved["conversation"])
                qr_id, *others = saved["activities"] or [""]
            except (ValueError, KeyError, TypeError):
                log.warning("Teams: session %s: unreadable QR record", session_id)
                continue
            expired = _card_activity(Card(title="VPN config expired", lines=(
                f"Session {session_id} has ended; this config no longer works. Use /vpn start for a new one.",
            )))
            try:
                if qr_id:
                    await self._post(target, expired, update_id=qr_id)
                for other in others:
                    await self._delete(target, other)
            except ConnectorError as exc:
                log.warning("Teams: session %s: could not retract the config card (%s)", session_id, exc)

    async def _open_private_chat(self, conv: ConversationRef) -> ConversationRef:
        """The 1:1 chat with the requester (Teams answers the existing one if there is one)."""
        reference = conv.data["reference"]
        service_url = reference.get("serviceUrl") or ""
        user_id = conv.data.get("user_id") or ""
        tenant = conv.data.get("tenant_id") or None
        if not service_url or not user_id:
            raise DeliveryError("I do not know how to reach you privately (this message carried no user)")
        known = self._private_chats.get((service_url, user_id))
        if known is None:
            params: dict[str, Any] = {"isGroup": False, "bot": reference.get("bot"), "members": [{"id": user_id}]}
            if tenant:
                params.update(tenantId=tenant, channelData={"tenant": {"id": tenant}})
            try:
                # Idempotent in Teams (the existing 1:1 chat comes back), so transient failures are retried.
                answer = await self.client.call("POST", service_url, "conversations", body=params, idempotent=True)
            except ConnectorError as exc:
                raise DeliveryError(_private_chat_refusal(exc)) from None
            known = (answer or {}).get("id") if isinstance(answer, dict) else None
            if not known:
                raise DeliveryError("Teams did not say which private chat to use; please try again")
            self._private_chats[(service_url, user_id)] = known
        return ConversationRef("teams", {
            "reference": {"serviceUrl": service_url, "channelId": reference.get("channelId") or "msteams", "bot": reference.get("bot"),
                          "user": reference.get("user"), "conversation": {"id": known, "conversationType": "personal", "tenantId": tenant}},
            "tenant_id": tenant or "", "user_id": user_id, "conversation_type": "personal",
        })

    # ----- incoming ---------------------------------------------------------------------------------

    def tenant_allowed(self, activity: Activity) -> bool:
        return not self.config.allowed_tenants or _tenant_of(activity) in self.config.allowed_tenants

    async def identity_of(self, activity: Activity) -> Identity | None:
        sender = activity.from_property
        aad = getattr(sender, "aad_object_id", None) if sender else None
        if not aad:
            return None
        try:
            key = UserKey("teams", aad.lower())
        except InvalidIdentity:
            return None
        return Identity(key, email=await self._email(activity, sender.id), display_name=sender.name or "")

    async def _email(self, activity: Activity, member_id: str) -> str | None:
        """The verified email or UPN from Teams (cached); guests and anonymous users have none."""
        cached = self._emails.get(member_id)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        email = None
        try:
            path = f"conversations/{quote(activity.conversation.id, safe='')}/members/{quote(member_id, safe='')}"
            member = await self.client.call("GET", activity.service_url, path, idempotent=True)
            if isinstance(member, dict):
                email = member.get("email") or member.get("userPrincipalName") or None
                email = str(email) if email else None
        except ConnectorError as exc:  # a lookup failure must not lock the user out of id-based rules
            log.info("Teams: member lookup failed (%s); matching by id only", exc)
        self._emails[member_id] = (time.monotonic() + self.config.member_cache_seconds, email)
        return email

    async def on_message(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        if not self.tenant_allowed(activity):
            log.warning("Teams: message from tenant %s ignored (not allowed)", _tenant_of(activity)[:40])
            return
        TurnContext.remove_recipient_mention(activity)
        self._later(activity, lambda: self._handle_message(activity))

    async def _handle_message(self, activity: Activity) -> None:
        text = activity.text or ""
        if not text.strip() and isinstance(activity.value, dict):
            text = str(activity.value.get("command") or "")  # a card button: authorised like typed text
        conv = _conversation(activity)
        who = await self.identity_of(activity)
        if who is None:
            await self.send_text(conv, "Sorry, I can only serve people signed in to your organisation's Teams.")
            return
        private = conv.data["conversation_type"] == "personal"
        await self.deps.handle(Incoming(who, text, conv, message_id=activity.id, is_private=private))

    async def on_installed(self, turn_context: TurnContext) -> None:
        activity = turn_context.activity
        if self.tenant_allowed(activity):
            self._later(activity, lambda: self._greet(activity))

    async def _greet(self, activity: Activity) -> None:
        who = await self.identity_of(activity)
        # An id is personal data: said only in a personal chat, never in a channel or group chat.
        await self.send_card(_conversation(activity), self.deps.welcome(who, _is_personal(activity)))

    async def on_file_consent(self, turn_context: TurnContext, accepted: bool) -> None:
        activity = turn_context.activity
        if not self.tenant_allowed(activity):
            log.warning("Teams: file consent from tenant %s ignored (not allowed)", _tenant_of(activity)[:40])
            return
        value = activity.value if isinstance(activity.value, dict) else {}
        token = str((value.get("context") or {}).get("token") or "")
        upload = value.get("uploadInfo") if accepted else None  # its URL was checked in _messages
        self._later(activity, lambda: self._file_consent(activity, token, accepted, upload))

    async def _file_consent(self, activity: Activity, token: str, accepted: bool, upload: dict | None) -> None:
        conv = _conversation(activity)
        store, now = self.deps.configs, self.deps.clock()
        claim = await store.get_claim(one_time_configs.token_hash(token)) if token else None
        if claim is None or claim.session_id == "" or claim.token_hash.startswith(QR_RECORD):
            claim = None
        if claim is not None and not await self._is_owner(activity, claim):
            log.warning("Teams: file consent for session %s by someone other than its owner refused", claim.session_id)
            await self.send_text(conv, "That file belongs to someone else; nothing was sent.")
            return
        taken = await one_time_configs.take(store, token, now) if claim is not None else None
        if taken is None:
            await self.send_text(conv, "That file is no longer available (already sent, declined, or its session ended).")
            return
        if not accepted:
            await self.send_text(conv, "No problem: the QR code above is all you need. The file was discarded.")
            return
        assert upload is not None
        data = taken[1].encode()
        del taken
        headers = {"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}", "Content-Type": "application/octet-stream"}
        try:
            # A PUT of the whole file to a pre-authorised URL: safe to repeat. No bot token goes there.
            await self.client.request("PUT", upload["uploadUrl"], data=data, headers=headers, idempotent=True)
        except ConnectorError as exc:
            log.warning("Teams: file upload failed (%s)", exc.status or exc.code)
            await self.send_text(conv, "The file upload failed; the QR code above still works.")
            return
        info = {"uniqueId": upload.get("uniqueId"), "fileType": upload.get("fileType")}
        await self._post(conv, {"type": "message", "attachments": [
            {"contentType": FILE_INFO, "name": upload.get("name"), "contentUrl": upload.get("contentUrl"), "content": info}
        ]})

    async def _is_owner(self, activity: Activity, claim: Claim) -> bool:
        """The invoking user is the claim's owner, in the tenant the session was started from."""
        aad = getattr(activity.from_property, "aad_object_id", None) or ""
        if not aad or claim.user != f"teams:{aad.lower()}":
            return False
        session = await self.deps.sessions.get(claim.session_id)
        if session is None:
            return False
        return (session.conversation.data.get("tenant_id") or "") == _tenant_of(activity)


# ----- Action.Execute card actions (issue 22) --------------------------------------------------------

class _MessageResponse(AdaptiveCardInvokeResponse):
    """The SDK types an invoke response's `value` as an object; a message response's value is a string."""

    _attribute_map = {**AdaptiveCardInvokeResponse._attribute_map, "value": {"key": "value", "type": "str"}}


async def _on_card_action(channel: TeamsChannel, turn_context: TurnContext) -> InvokeResponse:
    """An `adaptiveCard/action` invoke (Action.Execute): its `data.command` is handled like typed text,
    authorised the same way; Teams gets its answer at once, the command runs in a tracked task."""
    activity = turn_context.activity
    value = activity.value if isinstance(activity.value, dict) else {}
    action = value.get("action") if isinstance(value.get("action"), dict) else {}
    data = action.get("data")
    command = str(data.get("command") or "") if isinstance(data, dict) else ""
    if action.get("type") != "Action.Execute" or not command:
        return InvokeResponse(status=400, body=AdaptiveCardInvokeResponse(
            status_code=400, type="application/vnd.microsoft.error", value={"code": "BadRequest", "message": "not a command card action"}))
    if channel.tenant_allowed(activity):
        activity.text = command
        channel._later(activity, lambda: channel._handle_message(activity))
    return InvokeResponse(status=200, body=_MessageResponse(status_code=200, type="application/vnd.microsoft.activity.message", value="Working on it…"))


def _private_chat_refusal(exc: ConnectorError) -> str:
    """The true reason a 1:1 chat could not be opened, in words the user can act on."""
    if exc.status in (403, 404) or exc.code in ("BotNotInConversationRoster", "ConversationBlockedByUser", "Forbidden"):
        if exc.code == "ConversationBlockedByUser":
            return "you have blocked the VPN bot in Teams; unblock it in our private chat, then try again"
        return INSTALL_HELP
    if exc.status in RETRY_ALWAYS or exc.status in RETRY_IF_IDEMPOTENT or exc.status == 0:
        return f"Teams is not answering right now ({exc.status or exc.code}); please try again in a minute"
    return f"Teams refused to open a private chat with you ({exc.status} {exc.code}); an admin can find details in the log"


def _card_activity(card: Card) -> dict:
    content = render_adaptive(card)
    content["fallbackText"] = render_card_text(card)
    return {"type": "message", "attachments": [{"contentType": ADAPTIVE, "content": content}]}


class _Handler(TeamsActivityHandler):
    """Routes Teams events to the channel; everything else gets the SDK's defaults."""

    def __init__(self, channel: TeamsChannel) -> None:
        self.channel = channel

    async def on_message_activity(self, turn_context: TurnContext) -> None:
        await self.channel.on_message(turn_context)

    async def on_teams_members_added(self, teams_members_added, team_info, turn_context: TurnContext) -> None:
        bot_id = turn_context.activity.recipient.id if turn_context.activity.recipient else None
        if any(m.id == bot_id for m in teams_members_added):
            await self.channel.on_installed(turn_context)

    async def on_teams_file_consent_accept(self, turn_context: TurnContext, file_consent_card_response) -> None:
        await self.channel.on_file_consent(turn_context, accepted=True)

    async def on_teams_file_consent_decline(self, turn_context: TurnContext, file_consent_card_response) -> None:
        await self.channel.on_file_consent(turn_context, accepted=False)

    async def on_invoke_activity(self, turn_context: TurnContext) -> InvokeResponse:
        if turn_context.activity.name == "adaptiveCard/action":
            return await _on_card_action(self.channel, turn_context)
        return await super().on_invoke_activity(turn_context)
