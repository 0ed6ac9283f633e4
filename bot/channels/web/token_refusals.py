"""Why a bearer token was refused, as a code: the 401's `reason`, which the page turns into a
sentence an admin can act on (web/app.js: REASON_WORDS), and the API's own sentence for scripts.

Most codes name a misconfiguration, not a person's mistake: a v1.0 token (the API app still asks for
v1), a token for another API or tenant, a missing scope. Only `expired` and `account_changed` are
the ordinary end of a sign-in."""
from __future__ import annotations

import jwt


class InvalidToken(Exception):
    """A refused token; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


# PyJWT's refusals as codes (the first match wins; anything else is "malformed").
_JWT_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
)


def jwt_reason(exc: jwt.PyJWTError) -> str:
    return next((reason for kind, reason in _JWT_REASONS if isinstance(exc, kind)), "malformed")


ROUTINE = frozenset({"expired", "account_changed"})  # the normal end of a sign-in: logged at INFO, not WARNING

REASONS: dict[str, str] = {
    "no_token": "Sign in first: send Authorization: Bearer <token>.",
    "expired": "The sign-in has expired. Sign in again.",
    "account_changed": "This account was removed or its password changed. Sign in again.",
    "not_yet_valid": "The token is not valid yet: check the clocks of this computer and the server.",
    "malformed": "The sign-in token is not valid. Sign in again.",
    "bad_signature": "The token's signature does not verify: it was not issued by this service's sign-in (or VPN_LOCAL_AUTH_SECRET changed).",
    "unknown_key": "The token is signed with a key the tenant does not publish (an app with its own signing key, or a token from elsewhere).",
    "wrong_tenant": "The token is from another Microsoft Entra tenant than VPN_ENTRA_TENANT_ID.",
    "wrong_issuer": "The token's issuer is not the tenant's v2.0 issuer.",
    "wrong_audience": "The token is for another API: the page must ask for this API's scope, and VPN_ENTRA_API_AUDIENCE must be the API app's client id.",
    "v1_token": "The token is a v1.0 access token: set requestedAccessTokenVersion to 2 in the API app registration's manifest.",
    "missing_scope": "The token lacks the access_as_user scope (an app-only token, or the page asked for another scope).",
    "entra_off": "This service does not accept Microsoft sign-in: VPN_ENTRA_TENANT_ID is not set on it.",
}
