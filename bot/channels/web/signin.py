"""Who is calling: a bearer token from Microsoft Entra ID (RS256) or a local account (HS256), and the
local login route. Each verifier pins its own algorithm; the header's `alg` only picks which one asks."""
from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any

from aiohttp import web

from bot.channels.web.body import json_body, json_error
from bot.channels.web.client_address import client_address
from bot.channels.web.config import WebConfig
from bot.channels.web.deps import WebDeps
from bot.channels.web.signin_entra import EntraUnavailable, EntraVerifier
from bot.channels.web.signin_local import BadEmail, LocalAuth, LoginRefused, TooManyAttempts
from bot.channels.web.token_refusals import REASONS, ROUTINE, InvalidToken
from bot.messages import Identity, InvalidIdentity, UserKey

log = logging.getLogger(__name__)
MAX_TOKEN = 8192
UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="vpn"'}


def _refused(reason: str, detail: str = "") -> web.Response:
    """The 401 with its reason code, and one log line (never the token): WARNING when it may be a
    misconfiguration, INFO when a sign-in simply ended, nothing for a request without a token."""
    if reason != "no_token":
        level = logging.INFO if reason in ROUTINE else logging.WARNING
        log.log(level, "web: bearer token refused: %s%s", reason, f" ({detail[:160]})".replace("\n", " ") if detail else "")
    return web.json_response({"error": REASONS[reason], "reason": reason}, status=401, headers=UNAUTHORIZED)


def _unverified_alg(token: str) -> str:
    """The header's `alg`, to pick the verifier; each verifier pins its own algorithm again."""
    head = token.split(".", 1)[0]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,2000}", head):
        return ""
    try:
        header: Any = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, RecursionError):
        return ""
    alg = header.get("alg") if isinstance(header, dict) else None
    return alg if isinstance(alg, str) else ""


class SignIn:
    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self._local: LocalAuth | None = None
        self._entra: EntraVerifier | None = None

    def attach(self, deps: WebDeps) -> None:
        self._local = LocalAuth(self.config.local_secret, deps.accounts, deps.clock)
        if self.config.entra_tenant_id:
            c = self.config
            self._entra = EntraVerifier(deps.http, c.entra_authority, c.entra_tenant_id, c.entra_audience)

    async def identify(self, request: web.Request) -> Identity | web.Response:
        """The verified caller, or the 401/503 to answer (a 401 names its reason: token_refusals.py)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
            return _refused("no_token")
        alg = _unverified_alg(token)
        try:
            if alg == "HS256" and self._local is not None:
                local = await self._local.verify(token)
                return Identity(UserKey("local", local.email), email=local.email, display_name=local.email)
            if alg == "RS256" and self._entra is not None:
                entra = await self._entra.verify(token)
                return Identity(UserKey("teams", entra.oid), email=entra.email, display_name=entra.name, groups=entra.groups)
        except InvalidToken as exc:
            return _refused(exc.reason, exc.detail)
        except InvalidIdentity as exc:
            return _refused("malformed", str(exc))
        except EntraUnavailable:
            return json_error(503, "Microsoft sign-in cannot be checked right now; try again in a minute.", **{"Retry-After": "30"})
        if alg == "RS256":
            return _refused("entra_off", "an RS256 token, and Microsoft sign-in is not configured")
        return _refused("malformed", f"alg {alg[:20]!r}")

    async def login(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        email, password = body.get("email"), body.get("password")
        if not isinstance(email, str) or not isinstance(password, str) or not email or not password:
            return json_error(400, 'Send {"email": "...", "password": "..."}.')
        assert self._local is not None
        try:
            where = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), self.config.trusted_proxies)
            token, expires_in = await self._local.login(email, password, where)
        except TooManyAttempts as exc:
            return json_error(429, "Too many sign-in attempts. Wait a while and try again.", **{"Retry-After": str(exc.retry_after)})
        except BadEmail as exc:  # the text's shape, not the account's existence: said plainly (issue 18.6)
            return json_error(400, f"Check the email: {exc}.")
        except LoginRefused:
            return json_error(401, "Wrong email or password.")
        finally:
            del password
        return web.json_response({"token": token, "expires_in": expires_in, "token_type": "Bearer"})
