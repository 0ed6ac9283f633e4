"""The OpenAPI description of GET /api/usage and GET /api/audit (issue 23), merged into /api/openapi.json."""
from __future__ import annotations

from typing import Any

from bot.store.ports import END_KINDS

TIME = {"type": "string", "format": "date-time"}
WHEN = {"type": "string", "description": "An ISO date (2026-11-01) or date-time (2026-11-01T12:00:00Z); a date in `to` includes that day"}
ERR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
TOTALS = {
    "sessions": {"type": "integer"}, "minutes": {"type": "number", "description": "Minutes in use (ready to end)"},
    "cost": {"type": "number", "description": "Estimated US dollars"},
    "bytes_in": {"type": "integer", "description": "To the users (download)"}, "bytes_out": {"type": "integer", "description": "From the users (upload)"},
    "endings": {"type": "object", "additionalProperties": {"type": "integer"}, "description": "Sessions per end reason"},
}


def usage_schemas() -> dict[str, Any]:
    return {
        "UsageRecord": {
            "type": "object",
            "description": "One ended session (kept VPN_USAGE_RETENTION_DAYS); the CSV has these columns, in this order",
            "properties": {
                "session_id": {"type": "string"}, "owner": {"type": "string"}, "owner_label": {"type": "string"},
                "channel": {"type": "string"}, "provider": {"type": "string"}, "region": {"type": "string"},
                "requested_at": TIME, "ready_at": {"type": ["string", "null"], "format": "date-time"}, "ended_at": TIME,
                "minutes": {"type": "number"}, "cost": {"type": "number"}, "bytes_in": {"type": "integer"}, "bytes_out": {"type": "integer"},
                "end_reason": {"enum": list(END_KINDS)}, "detail": {"type": "string", "description": "What its owner was told"},
                "decided_by": {"type": "string"}, "decided_at": {"type": ["string", "null"], "format": "date-time"},
                "approvers": {"type": "string"}, "request_reason": {"type": "string"},
            },
        },
        "AuditEntry": {
            "type": "object",
            "properties": {
                "at": TIME, "user": {"type": "string"}, "email": {"type": "string"}, "channel": {"type": "string"},
                "command": {"type": "string"}, "allowed": {"type": "boolean"}, "reason": {"type": "string"},
                "count": {"type": "integer", "description": "Refusals of one identity and reason in that hour, counted on one row"},
            },
        },
    }


def usage_paths(auth_errors: dict[str, Any]) -> dict[str, Any]:
    user = {"name": "user", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 200},
            "description": "A user key (teams:…, email:…) or email"}
    return {
        "/api/usage": {"get": {
            "summary": "Admins: sessions requested in a period (default: the last 30 days), per user and per day; Accept: text/csv for the rows as CSV",
            "security": [{"bearer": []}],
            "parameters": [{"name": "from", "in": "query", "required": False, "schema": WHEN},
                           {"name": "to", "in": "query", "required": False, "schema": WHEN}, user],
            "responses": {
                "200": {"description": "The report", "content": {
                    "application/json": {"schema": {"type": "object", "required": ["from", "to", "totals", "users", "days", "rows"], "properties": {
                        "from": TIME, "to": TIME, "user": {"type": ["string", "null"]},
                        "totals": {"type": "object", "properties": TOTALS},
                        "users": {"type": "array", "items": {"type": "object", "properties": {"user": {"type": "string"}, "label": {"type": "string"}, **TOTALS}}},
                        "days": {"type": "array", "items": {"type": "object", "properties": {"day": {"type": "string", "format": "date"}, **TOTALS}},
                                 "description": "Every day of the period, oldest first"},
                        "rows": {"type": "array", "items": {"$ref": "#/components/schemas/UsageRecord"}},
                    }}},
                    "text/csv": {"schema": {"type": "string"}, "description": "A header line, then one line per UsageRecord"},
                }},
                "400": {"description": "Invalid from, to or user, or a period over 400 days", **ERR},
                **auth_errors,
                "403": {"description": "Not an admin, or not on the allowlist", **ERR},
            },
        }},
        "/api/audit": {"get": {
            "summary": "Admins: the audit log, newest first",
            "security": [{"bearer": []}],
            "parameters": [{"name": "from", "in": "query", "required": False, "schema": WHEN},
                           {"name": "to", "in": "query", "required": False, "schema": WHEN}, user,
                           {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
            "responses": {
                "200": {"description": "Entries", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["entries"],
                    "properties": {"entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}},
                }}}},
                "400": {"description": "Invalid from, to, user or limit", **ERR},
                **auth_errors,
                "403": {"description": "Not an admin, or not on the allowlist", **ERR},
            },
        }},
    }
