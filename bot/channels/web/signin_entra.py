"""Microsoft Entra ID access tokens for the web API: RS256 only, keys from the tenant's JWKS.

The tenant's OpenID metadata (`{authority}/{tenant}/v2.0/.well-known/openid-configuration`) names
the issuer and the JWKS; both are fetched with aiohttp (PyJWT's PyJWKClient would block the loop)
and cached. A token is refused before any fetch unless its unverified header and claims already
name RS256, our tenant and our audience; an unknown key id refreshes the keys at most once per
`refresh_seconds`, so made-up tokens cause no work.

Identity: `oid` is the same person as `teams:<aadObjectId>`. An email counts as verified only where
Entra vouches for it: the `upn` of a member account of the tenant (its domain is one the tenant
verified), or `email` with `xms_edov` = true. A `groups` claim (group object ids, where the app
registration asks for them) answers `group:` rules; past Entra's limit the token says "overage"
instead, and the policy asks Microsoft Graph.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from bot.channels.web.token_refusals import InvalidToken, jwt_reason

log = logging.getLogger(__name__)
SCOPE = "access_as_user"
ALGORITHM = "RS256"
LEEWAY = 60  # seconds of clock skew


def _is_v1(claims: dict[str, Any]) -> bool:
    """Entra's v1.0 access tokens (the API app's manifest still asks for them): `ver` 1.0, issuer sts.windows.net."""
    return str(claims.get("ver", "")) == "1.0" or str(claims.get("iss", "")).startswith("https://sts.windows.net/")


class EntraUnavailable(Exception):
    """The metadata or keys could not be fetched: not the client's fault."""


@dataclass(frozen=True)
class EntraIdentity:
    oid: str
    tenant_id: str
    email: str | None
    name: str
    groups: frozenset[str] | None = None  # None: no groups claim, or an overage (ask Graph)


class EntraVerifier:
    def __init__(
        self, http: aiohttp.ClientSession, authority: str, tenant_id: str, audience: str, *,
        cache_seconds: float = 24 * 3600, refresh_seconds: float = 300, retry_seconds: float = 10,
    ) -> None:
        self._http = http
        self.tenant_id = tenant_id.lower()
        self.audience = audience
        self.metadata_url = f"{authority.rstrip('/')}/{tenant_id}/v2.0/.well-known/openid-configuration"
        self._cache_seconds = cache_seconds
        self._refresh_seconds = refresh_seconds
        self._issuer: str | None = None
        self._jwks_uri: str | None = None
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._retry_seconds = retry_seconds
        self._failed_at = float("-inf")  # with no keys yet, a failed fetch answers for this long: no fetch per request
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> EntraIdentity:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed", str(exc)) from None
        if header.get("alg") != ALGORITHM or not isinstance(header.get("kid"), str):
            raise InvalidToken("malformed", "not an RS256 token with a key id")
        aud = unverified.get("aud")
        if str(unverified.get("tid", "")).lower() != self.tenant_id:
            raise InvalidToken("wrong_tenant", "not for this tenant")
        ours = aud == self.audience or (isinstance(aud, list) and self.audience in aud)
        if _is_v1(unverified) and (ours or self.audience in str(aud)):  # a v1 token's aud is the App ID URI, api://<id>
            raise InvalidToken("v1_token", "a v1.0 access token for this API (its app registration must ask for v2)")
        if not ours:
            raise InvalidToken("wrong_audience", "not for this API")
        key = await self._key(header["kid"])
        try:
            claims = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=self.audience, issuer=self._issuer, leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "oid", "tid"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(jwt_reason(exc), str(exc)) from None
        if str(claims["tid"]).lower() != self.tenant_id:
            raise InvalidToken("wrong_tenant")
        if SCOPE not in str(claims.get("scp", "")).split():
            raise InvalidToken("missing_scope", f"the token lacks the {SCOPE} scope (app-only tokens are not people)")
        oid = claims["oid"]
        if not isinstance(oid, str) or not oid:
            raise InvalidToken("malformed", "no object id")
        return EntraIdentity(oid=oid.lower(), tenant_id=self.tenant_id, email=_verified_email(claims, self._issuer), name=str(claims.get("name", ""))[:100], groups=_groups(claims))

    async def _key(self, kid: str) -> Any:
        now = time.monotonic()
        if kid in self._keys and now - self._fetched_at < self._cache_seconds:
            return self._keys[kid]
        async with self._lock:
            now = time.monotonic()
            if not self._keys and now - self._failed_at < self._retry_seconds:
                raise EntraUnavailable("the tenant's keys could not be fetched a moment ago")
            stale = now - self._fetched_at >= self._cache_seconds
            may_refresh = now - self._fetched_at >= self._refresh_seconds
            if stale or (kid not in self._keys and may_refresh):
                await self._refresh()
        if kid not in self._keys:
            raise InvalidToken("unknown_key", "a signing key the tenant does not publish")
        return self._keys[kid]

    async def _refresh(self) -> None:
        try:
            meta = await self._get_json(self.metadata_url)
            issuer, jwks_uri = meta.get("issuer"), meta.get("jwks_uri")
            if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
                raise ValueError("metadata without issuer or jwks_uri")
            jwks = await self._get_json(jwks_uri)
            keys = {}
            for jwk in jwks.get("keys") or []:
                if isinstance(jwk, dict) and jwk.get("kty") == "RSA" and jwk.get("use", "sig") == "sig" and isinstance(jwk.get("kid"), str):
                    keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm=ALGORITHM).key
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, jwt.PyJWTError) as exc:
            if self._keys:
                log.warning("Entra keys could not be refreshed (%s); keeping the ones we have", exc)
                self._fetched_at = time.monotonic() - self._cache_seconds + self._refresh_seconds
                return
            self._failed_at = time.monotonic()
            log.error("Entra metadata/keys unavailable from %s: %s", self.metadata_url, exc)
            raise EntraUnavailable(str(exc)) from None
        self._issuer, self._jwks_uri, self._keys = issuer, jwks_uri, keys
        self._fetched_at = time.monotonic()
        log.info("Entra signing keys loaded: %d", len(keys))

    async def _get_json(self, url: str) -> dict:
        async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                raise ValueError(f"{url} answered {resp.status}")
            data = json.loads(await resp.read())
        if not isinstance(data, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return data


def _groups(claims: dict) -> frozenset[str] | None:
    """The token's group object ids; None when it has none to give or too many (`_claim_names`, `hasgroups`)."""
    names = claims.get("_claim_names")
    if (isinstance(names, dict) and "groups" in names) or claims.get("hasgroups"):
        return None
    groups = claims.get("groups")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return None
    return frozenset(g.lower() for g in groups[:1000])


def _verified_email(claims: dict, issuer: str | None) -> str | None:
    """See the module docstring: only what Entra itself vouches for."""
    member = claims.get("idp") in (None, issuer)
    upn = claims.get("upn")
    if member and isinstance(upn, str) and "@" in upn and "#EXT#" not in upn.upper():
        return upn
    email = claims.get("email")
    if claims.get("xms_edov") in (True, "true", "1", 1) and isinstance(email, str) and "@" in email:
        return email
    return None
