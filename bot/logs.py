"""Logging set-up with a last line of defence: anything shaped like a WireGuard secret is masked.

Code never logs keys on purpose; this filter catches the accident (a config in an exception
message, a repr of a foreign object) before it reaches a log file.

`VPN_LOG_FORMAT=json` writes one JSON object per line (for Container Apps / Log Analytics) with the
session id, user key and request id of the work that logged it: they travel in context variables,
so a line logged deep inside a provisioning task still says whose session it was.
"""
from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import datetime, timezone

_SECRET_LINE = re.compile(r"(?i)((?:private|preshared)\s*_?key\s*[=:]\s*)\S+")
# Our messages name sessions as "session <id>": the fallback when no context variable is bound.
_SESSION_IN_TEXT = re.compile(r"\bsession ([0-9a-f]{10})\b")

SESSION_ID: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="")
USER: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="")
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Chatty at INFO: the Azure SDK's HTTP policy logs every request's and response's headers.
NOISY_LOGGERS = (
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.identity",
    "azure.data.tables",
    "msrest",
    "msal",
    "urllib3",
    "botbuilder",
    "botframework",
    "aiohttp.access",
)
FORMATS = ("text", "json")


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _SECRET_LINE.sub(r"\1[redacted]", message)
        if record.args or cleaned != message:  # formatted once: the formatter's getMessage() reuses it
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            redacted = _SECRET_LINE.sub(r"\1[redacted]", text)
            if redacted != text:
                record.exc_text, record.exc_info = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, session_id, user, request_id[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        session_id = getattr(record, "session_id", "") or SESSION_ID.get()
        if not session_id:
            found = _SESSION_IN_TEXT.search(message)
            session_id = found.group(1) if found else ""
        out = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "session_id": session_id,
            "user": getattr(record, "user", "") or USER.get(),
            "request_id": getattr(record, "request_id", "") or REQUEST_ID.get(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def bind(*, session_id: str | None = None, user: str | None = None, request_id: str | None = None) -> None:
    """Tag every log line of the current task (and the tasks it starts) with these ids."""
    if session_id is not None:
        SESSION_ID.set(session_id)
    if user is not None:
        USER.set(user)
    if request_id is not None:
        REQUEST_ID.set(request_id)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Neither format shows them: not looked up for every record (the logging HOWTO's "Optimization").
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


def route_to_file(path, inline: logging.Handler) -> None:
    """Console mode: every record to `path` (0600, appended), only `inline`'s level (warnings) on screen."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    root = logging.getLogger()
    to_file = logging.FileHandler(path, encoding="utf-8")
    for handler in (to_file, inline):  # same format and secret filter as the configured handler
        handler.setFormatter(root.handlers[0].formatter if root.handlers else logging.Formatter())
        handler.addFilter(RedactSecrets())
    root.handlers[:] = [to_file, inline]
