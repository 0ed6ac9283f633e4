"""Logging set-up with a last line of defence: anything shaped like a WireGuard secret is masked.

Code never logs keys on purpose; this filter catches the accident (a config in an exception
message, a repr of a foreign object) before it reaches a log file.
"""
from __future__ import annotations

import logging
import re
import sys

_SECRET_LINE = re.compile(r"(?i)((?:private|preshared)\s*_?key\s*[=:]\s*)\S+")


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _SECRET_LINE.sub(r"\1[redacted]", message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            redacted = _SECRET_LINE.sub(r"\1[redacted]", text)
            if redacted != text:
                record.exc_text, record.exc_info = redacted, None
        return True


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)


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
