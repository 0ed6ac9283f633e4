"""Microsoft Graph: the only module that calls it. One question, group membership, with the bot's own app token.

`POST {endpoint}/v1.0/users/{object id}/checkMemberGroups` with at most 20 group ids per call (Graph's
limit) answers which of them the user belongs to, nested groups included. It needs the application
permissions GroupMember.Read.All and User.Read.All (Microsoft's page for checkMemberGroups pairs them
for calls about users) on the bot's app registration or its managed identity, granted with an
admin's consent (docs/governance.md): a deployment template cannot consent for the tenant.

Fail closed: anything but a clear answer — no token, 401/403, 429/5xx after retries, a timeout, a
reply that is not the documented shape — raises `GroupsUnavailable`, and the policy refuses. A 404
(no such user in the directory) is a clear answer: a member of nothing. Tokens are never logged.
"""
from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import quote, urlsplit

import aiohttp
import msal
import requests

from bot.backoff import retry_delay
from bot.engine.groups import GroupsUnavailable

log = logging.getLogger(__name__)
CHUNK = 20  # group ids per checkMemberGroups call
RETRY = frozenset({429, 500, 502, 503, 504})
MAX_WAIT = 5.0  # seconds one retry may wait
TokenSource = Callable[[], Awaitable[str]]
# The sign-in host of each national cloud's Graph; anything else signs in at the public cloud's.
LOGIN_OF = {"graph.microsoft.us": "https://login.microsoftonline.us", "dod-graph.microsoft.us": "https://login.microsoftonline.us",
            "microsoftgraph.chinacloudapi.cn": "https://login.chinacloudapi.cn"}
PUBLIC_LOGIN = "https://login.microsoftonline.com"


class GraphClient:
    """The `GroupLookup` bot/engine/groups.py asks (cached there), on the app's one aiohttp session."""

    def __init__(
        self, http: aiohttp.ClientSession, endpoint: str, token: TokenSource, *,
        ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0, attempts: int = 3, backoff: float = 0.5,
    ) -> None:
        self._http = http
        self._endpoint = endpoint.rstrip("/")
        self._token = token
        self._ssl = ssl_context  # tests trust their own certificate; None: the system's CAs
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff

    async def member_groups(self, object_id: str, group_ids: Sequence[str]) -> frozenset[str]:
        found: set[str] = set()
        wanted = sorted({g.lower() for g in group_ids})
        for i in range(0, len(wanted), CHUNK):
            answer = await self._post(f"/v1.0/users/{quote(object_id, safe='')}/checkMemberGroups", {"groupIds": wanted[i:i + CHUNK]})
            if answer is None:
                return frozenset()  # not in the directory: in no group
            value = answer.get("value") if isinstance(answer, dict) else None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise GroupsUnavailable("Microsoft Graph answered checkMemberGroups without a list of ids")
            found |= {v.lower() for v in value}
        return frozenset(found & set(wanted))

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        """The parsed answer, None for 404; raises GroupsUnavailable for everything that is not an answer."""
        try:
            token = await self._token()
        except Exception as exc:  # MSAL and the managed identity raise what they like: no token is no answer
            raise GroupsUnavailable(f"no token for Microsoft Graph ({type(exc).__name__})") from None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        data = json.dumps(body).encode()
        url = self._endpoint + path
        for attempt in range(self._attempts):
            status, retry_after, raw = 0, "", b""
            try:
                async with self._http.post(url, data=data, headers=headers, ssl=self._ssl if self._ssl is not None else True,
                                           timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
                    status, retry_after, raw = resp.status, resp.headers.get("Retry-After", ""), await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, ssl.SSLError) as exc:
                problem = f"Microsoft Graph unreachable ({type(exc).__name__})"
            else:
                if status == 200:
                    try:
                        return json.loads(raw)
                    except ValueError:
                        raise GroupsUnavailable("Microsoft Graph answered something that is not JSON") from None
                if status == 404:
                    return None
                code = _error_code(raw)
                if status in (401, 403):
                    log.error("Microsoft Graph refused the bot (%d %s): grant its app GroupMember.Read.All and User.Read.All "
                              "with admin consent (docs/governance.md)", status, code)
                    raise GroupsUnavailable(f"Microsoft Graph refused the bot ({status} {code})")
                problem = f"Microsoft Graph answered {status} {code}".strip()
                if status not in RETRY:
                    raise GroupsUnavailable(problem)
            if attempt + 1 < self._attempts:
                delay = max(retry_delay(attempt, self._backoff, retry_after), _seconds(retry_after))  # Retry-After is a minimum
                if delay > MAX_WAIT:
                    break  # a person is waiting for an answer: refuse now rather than later
                log.info("%s; retrying in %.1fs", problem, delay)
                await asyncio.sleep(delay)
        log.warning("%s; refusing what depends on group membership", problem)
        raise GroupsUnavailable(problem)


def _seconds(retry_after: str) -> float:
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        return 0.0


def _error_code(raw: bytes) -> str:
    try:
        return str((json.loads(raw).get("error") or {}).get("code") or "")[:80]
    except (ValueError, AttributeError):
        return ""


class _TimeoutSession(requests.Session):
    """MSAL's HTTP client with a timeout on every call."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(*args, **kwargs)


class AppToken:
    """The bot's own app token for Graph: client credentials (MicrosoftAppId + MicrosoftAppPassword) or
    the user-assigned managed identity (MicrosoftAppType=UserAssignedMSI). MSAL is synchronous: it runs
    in a thread; the token is kept until five minutes before it expires."""

    def __init__(self, app_id: str, password: str, app_type: str, tenant_id: str, graph_endpoint: str, *, timeout: float = 10.0) -> None:
        host = (urlsplit(graph_endpoint).hostname or "").lower()
        self._resource = f"https://{host}"
        self._login = LOGIN_OF.get(host, PUBLIC_LOGIN)
        self._app_id, self._password, self._type, self._tenant = app_id, password, app_type.lower(), tenant_id
        self._timeout = timeout
        self._client: Any = None
        self._cached: tuple[float, str] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> str:
        cached = self._cached
        if cached and cached[0] > time.monotonic():
            return cached[1]
        async with self._lock:
            cached = self._cached
            if cached and cached[0] > time.monotonic():
                return cached[1]
            token, lifetime = await asyncio.to_thread(self._acquire)
            self._cached = (time.monotonic() + max(lifetime - 300, 30), token)
            return token

    def _acquire(self) -> tuple[str, float]:
        if self._client is None:
            http = _TimeoutSession(self._timeout)
            if self._type == "userassignedmsi":
                self._client = msal.ManagedIdentityClient(msal.UserAssignedManagedIdentity(client_id=self._app_id), http_client=http)
            else:
                self._client = msal.ConfidentialClientApplication(
                    self._app_id, client_credential=self._password, authority=f"{self._login}/{self._tenant or 'organizations'}", http_client=http,
                )
        if isinstance(self._client, msal.ManagedIdentityClient):
            answer = self._client.acquire_token_for_client(resource=self._resource)
        else:
            answer = self._client.acquire_token_for_client(scopes=[f"{self._resource}/.default"])
        if "access_token" not in answer:
            raise PermissionError(f"no Graph token: {answer.get('error') or 'unknown error'}")
        return answer["access_token"], float(answer.get("expires_in") or 600)
