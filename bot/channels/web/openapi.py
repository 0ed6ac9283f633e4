"""The OpenAPI 3.1 description of the web API, served at /api/openapi.json (pure data)."""
from __future__ import annotations

from typing import Any

from bot.channels.web.openapi_usage import usage_paths, usage_schemas

SESSION_ID = {"type": "string", "pattern": "^[0-9a-f]{10}$"}
ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string"}, "user": {"type": "string"},
    "reason": {"type": "string", "description": "401 only: why the token was refused (expired, v1_token, wrong_audience, missing_scope, …)"},
}}
TIME = {"type": "string", "format": "date-time"}


def _err(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


AUTH_ERRORS = {
    "401": _err("No token, or a token that is invalid or expired"),
    "403": _err("Signed in, but not on the allowlist"),
    "503": _err("Microsoft Entra keys, or group memberships (Microsoft Graph), cannot be checked right now"),
}


def _session_op(summary: str, ok: dict, *extra: str, body: dict | None = None) -> dict:
    responses = {**ok, **AUTH_ERRORS, "404": _err("No such session, or not yours")}
    for code in extra:
        responses[code] = _err({"400": "Invalid input", "409": "Not possible in this state (e.g. already decided)", "410": "Already handed out",
                                "413": "Body too large"}[code])
    op: dict[str, Any] = {"summary": summary, "security": [{"bearer": []}], "responses": responses}
    if body:
        op["requestBody"] = body
    return op


STATES = ["requested", "provisioning", "ready", "expiring", "deleted", "failed", "awaiting_approval", "denied"]
LIVE_STATES = ["requested", "provisioning", "ready", "expiring", "awaiting_approval"]


def openapi_document(max_minutes: int) -> dict:
    # The person's own maximum may differ (their access policy): the engine answers 400 beyond it.
    minutes = {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 60, "description": f"default maximum {max_minutes}; GET /api/me has yours"}
    session_path_param = [{"name": "id", "in": "path", "required": True, "schema": SESSION_ID}]
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "VPN bot web API",
            "version": "1.0.0",
            "description": "Short-lived WireGuard sessions. Bearer tokens: Microsoft Entra ID access tokens (scope access_as_user) or local-account tokens from POST /api/login.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": ERROR,
                "Session": {
                    "type": "object",
                    "required": ["id", "state", "progress", "region", "endpoint", "created_at", "expires_at", "error"],
                    "properties": {
                        "id": SESSION_ID,
                        "state": {"enum": STATES},
                        "progress": {"type": "string", "description": "The latest progress step or message"},
                        "region": {"type": "string"},
                        "endpoint": {"type": "string"},
                        "created_at": TIME,
                        "expires_at": TIME,
                        "error": {"type": "string"},
                        "minutes": {"type": "integer"},
                        "time_left": {"type": ["integer", "null"], "description": "Seconds left while ready"},
                        "config_ready": {"type": "boolean", "description": "The config (and QR) wait for download"},
                        "messages": {"type": "array", "items": {"type": "string"}, "description": "Recent notices to the owner"},
                        "owner": {"type": "string", "description": "Admins only"},
                        "owner_label": {"type": "string", "description": "Admins only"},
                        "cost": {"type": "number", "description": "Admins only: estimated cost so far"},
                        "reason": {"type": "string", "description": "The requester's reason"},
                        "decided_by": {"type": "string", "description": "Who approved (or denied) the request"},
                        "end_reason": {"type": "string", "description": "Why it ended, or why it was not granted"},
                        "decide_by": {"type": ["string", "null"], "format": "date-time", "description": "Awaiting approval until then"},
                        "asked": {"type": "string", "description": "Owner and admins: the approvers sent the request privately"},
                        "tunnel": {"type": "string", "description": "Owner and admins, while ready: 'connected — handshake 20 s ago, ↓ 12.4 MB ↑ 3.1 MB' or 'not connected yet'"},
                        "handshake_at": {"type": ["string", "null"], "format": "date-time", "description": "The tunnel's latest handshake"},
                        "bytes_in": {"type": "integer", "description": "To the user (download) so far"},
                        "bytes_out": {"type": "integer", "description": "From the user (upload) so far"},
                    },
                },
            },
        },
        "paths": {
            "/api/login": {
                "post": {
                    "summary": "Sign in with a local account",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["email", "password"],
                        "properties": {"email": {"type": "string"}, "password": {"type": "string"}},
                    }}}},
                    "responses": {
                        "200": {"description": "A bearer token", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["token", "expires_in"],
                            "properties": {"token": {"type": "string"}, "expires_in": {"type": "integer"}, "token_type": {"type": "string"}},
                        }}}},
                        "400": _err("Invalid input"),
                        "401": _err("Wrong email or password"),
                        "413": _err("Body too large"),
                        "429": _err("Too many attempts for this account or address; see Retry-After"),
                    },
                }
            },
            "/api/me": {
                "get": {
                    "summary": "Who the token belongs to, their role, and the choices for a new session",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {"description": "The caller", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["user", "role", "regions"],
                            "properties": {"user": {"type": "string"}, "email": {"type": ["string", "null"]}, "name": {"type": "string"},
                                           "role": {"enum": ["user", "admin"]}, "regions": {"type": "array", "items": {"type": "string"}},
                                           "session_minutes": {"type": "integer"}, "max_session_minutes": {"type": "integer"},
                                           "approval": {"type": "string", "description": "never, always or over:<minutes>"},
                                           "policy": {"type": "string", "description": "The access policy entry that applies (empty: the defaults)"},
                                           "approver": {"type": "boolean", "description": "May decide requests (see GET /api/sessions?state=awaiting_approval)"}},
                        }}}},
                        **AUTH_ERRORS,
                    },
                }
            },
            "/api/sessions": {
                "get": {
                    "summary": "Your live sessions (admins: everyone's, with owner and cost); ?state=awaiting_approval adds the requests you may decide",
                    "security": [{"bearer": []}],
                    "parameters": [{"name": "state", "in": "query", "required": False, "schema": {"enum": LIVE_STATES}}],
                    "responses": {
                        "200": {"description": "Live sessions", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["sessions"],
                            "properties": {"sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}},
                        }}}},
                        "400": _err("Unknown state"),
                        **AUTH_ERRORS,
                    },
                },
                "post": {
                    "summary": "Start a session; poll the Location until config_ready",
                    "security": [{"bearer": []}],
                    "requestBody": {"required": False, "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"region": {"type": "string"}, "minutes": minutes,
                                       "public_key": {"type": "string", "description": "Bring your own WireGuard key pair: only its public key"},
                                       "reason": {"type": "string", "maxLength": 200, "description": "For the approvers, where an approval is needed"}},
                    }}}},
                    "responses": {
                        "202": {"description": "Accepted; provisioning runs in the background (state awaiting_approval: once approved)",
                                "headers": {"Location": {"schema": {"type": "string"}, "description": "/api/sessions/{id}"}},
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}},
                        "400": _err("Invalid input"),
                        "409": _err("Refused: you already have a session, or every slot is in use"),
                        "413": _err("Body too large"),
                        **AUTH_ERRORS,
                    },
                },
            },
            "/api/sessions/{id}": {
                "parameters": session_path_param,
                "get": _session_op("One session (owner or admin)", {"200": {"description": "The session", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}}}),
                "delete": _session_op("Stop a session (owner or admin)", {"202": {"description": "Stopping", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}}}, "409"),
            },
            "/api/sessions/{id}/extend": {
                "parameters": session_path_param,
                "post": _session_op(
                    "Keep a ready session longer",
                    {"200": {"description": "Extended", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}}},
                    "400", "409", "413",
                    body={"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 60}}}}}},
                ),
            },
            "/api/sessions/{id}/approve": {
                "parameters": session_path_param,
                "post": _session_op(
                    "Approve a request awaiting approval (its approvers only, never its owner); fewer minutes grant less",
                    {"200": {"description": "Approved; provisioning starts", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}}},
                    "400", "409", "413",
                    body={"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 60}}}}}},
                ),
            },
            "/api/sessions/{id}/deny": {
                "parameters": session_path_param,
                "post": _session_op(
                    "Deny a request awaiting approval (its approvers only); the reason goes to the requester",
                    {"200": {"description": "Denied", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}}},
                    "400", "409", "413",
                    body={"required": False, "content": {"application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 200}}}}}},
                ),
            },
            "/api/sessions/{id}/config": {
                "parameters": session_path_param,
                "get": _session_op(
                    "The WireGuard .conf, once (owner only); taking it also erases the QR",
                    {"200": {"description": "The config file", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                    "409", "410",
                ),
            },
            "/api/sessions/{id}/config.png": {
                "parameters": session_path_param,
                "get": _session_op(
                    "The config as a QR code, once, and only until the .conf was taken (owner only)",
                    {"200": {"description": "PNG image", "content": {"image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}}}},
                    "409", "410",
                ),
            },
        },
    }
    doc["paths"].update(usage_paths(AUTH_ERRORS))  # GET /api/usage, GET /api/audit (issue 23)
    doc["components"]["schemas"].update(usage_schemas())
    return doc
