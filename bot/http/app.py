"""The aiohttp application: the factory, its middlewares, and the start-up gate (bot/http/startup.py).

Routes arrive as `RouteHook`s — the probes (bot/http/health.py), the VM callback, each channel's —
registered by the wiring (bot/wiring.py), which also adds the cleanup context that opens the store. One
middleware guards every route: what a client can break by sending bytes (nesting deep enough to
exhaust the parser's recursion, text that is not valid UTF-8 or holds lone surrogates) is answered
400 with one log line; anything else that escapes a handler is a bug: 500 with a reference and no
traceback in the body, and the traceback logged once per route and error type, so nobody can flood
the log by repeating a request. Requests aiohttp's own parser refuses (400) are logged in one line too.
"""
from __future__ import annotations

import logging
import secrets
from typing import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from bot import metrics
from bot.http.startup import STARTUP, Startup, gate

log = logging.getLogger(__name__)
MAX_BODY = 256 * 1024
RouteHook = Callable[[web.Application], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Raised by json.loads / str.encode / bytes.decode on hostile input, never by our own logic.
CLIENT_ERRORS = (RecursionError, UnicodeError)
_MAX_REMEMBERED_BUGS = 256


def _route_name(request: web.Request) -> str:
    """The route's pattern (`/api/groupme/{secret}`), never the raw path: paths carry secrets and junk."""
    route = request.match_info.route
    resource = route.resource
    return f"{request.method} {resource.canonical if resource is not None else '(no route)'}"


def error_middleware() -> Callable:
    logged_bugs: set[tuple[str, str]] = set()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except CLIENT_ERRORS as exc:
            log.warning("%s: refused a request the parser could not take (%s)", _route_name(request), type(exc).__name__)
            return web.Response(status=400, text="malformed request")
        except Exception as exc:
            ref = secrets.token_hex(4)
            key = (_route_name(request), type(exc).__name__)
            if key not in logged_bugs and len(logged_bugs) < _MAX_REMEMBERED_BUGS:
                logged_bugs.add(key)
                log.error("%s failed (ref %s)", key[0], ref, exc_info=exc)
            else:
                log.error("%s failed again with %s (ref %s)", key[0], key[1], ref)
            return web.Response(status=500, text=f"internal error (ref {ref})")

    return guard


class _OneLineForBadHttp(logging.Filter):
    """aiohttp's own parser logs a full traceback for every malformed request line or header (bad
    method, bytes a header may not hold): that is input, not a bug. One warning line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "malformed HTTP request refused (%s)", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_BAD_HTTP_FILTER = _OneLineForBadHttp()


def create_app(startup: Startup, hooks: Iterable[RouteHook] = ()) -> web.Application:
    # Metrics outermost, so they count the 400/500 the error guard answers.
    app = web.Application(client_max_size=MAX_BODY, middlewares=[metrics.observe_requests, error_middleware()])
    logging.getLogger("aiohttp.server").addFilter(_BAD_HTTP_FILTER)  # a no-op when already added
    app[STARTUP] = startup
    for hook in hooks:
        hook(app)
    # Innermost, after any middleware a hook added: a channel's headers (the web API's CORS) reach its 503 too.
    app.middlewares.append(gate(startup))
    return app
