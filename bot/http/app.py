"""The aiohttp application: the factory, its middlewares, and the start-up gate (bot/http/startup.py).

Routes arrive as `RouteHook`s — the probes (bot/http/health.py), the VM callback, each channel's —
registered by the wiring (bot/wiring.py), which also adds the cleanup context that opens the store. One
middleware guards every route: what a client can break by sending bytes (nesting deep enough to
exhaust the parser's recursion, text that is not valid UTF-8 or holds lone surrogates) is answered
400 with one log line, as is a body that does not decompress (Content-Encoding garbage); anything
else that escapes a handler is a bug: 500 with a reference and no traceback in the body, and the
traceback logged once per route and error type, so nobody can flood the log by repeating a request.
Requests aiohttp's own parser refuses (400) are logged in one line too.

Read time-outs: a request head must arrive within `header_timeout` of the connection opening or of
the previous response (aiohttp's keep-alive timer, which closes a connection still waiting for a
complete head; it also closes idle keep-alive connections), and its body within `body_timeout` of
the head (408, connection closed), so a client trickling bytes cannot hold a connection for long.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Awaitable, Callable, Iterable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError

from bot.http import metrics as http_metrics
from bot.http.startup import STARTUP, Startup, gate

log = logging.getLogger(__name__)
MAX_BODY = 256 * 1024
RouteHook = Callable[[web.Application], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Raised by json.loads / str.encode / bytes.decode on hostile input, never by our own logic.
CLIENT_ERRORS = (RecursionError, UnicodeError)
_MAX_REMEMBERED_BUGS = 256
# From the connection opening (or the previous response) to a complete request head; aiohttp closes a
# connection idle that long too. Short enough that trickled header lines cannot hold file
# descriptors, long enough for a slow mobile link and for a proxy's pooled connections.
HEADER_TIMEOUT = 15.0
BODY_TIMEOUT = 20.0  # from the head to the whole body (at most MAX_BODY)


class BodyTimeout(TimeoutError):
    """Set on a request's payload when its body did not arrive in time: every read raises it. A
    TimeoutError, so aiohttp's lingering close (draining what a handler left unread) stops quietly."""


class _BodyWatch:
    """Looks at a request's body every `EVERY` s until it is in. Two ways it never would be: the
    client stops sending (past the deadline: BodyTimeout), or all of it arrived but aiohttp's
    decoder refused its end (a truncated deflate stream: aiohttp then queues an error for the
    connection and leaves this payload open for ever), which becomes the RequestPayloadError it is.
    It outlives the handler, so a body nobody reads ends the same way (aiohttp's lingering close
    reads it). Stops by itself: at the end of the body, at an error, at the deadline."""

    EVERY = 0.1

    def __init__(self, request: web.Request, timeout: float) -> None:
        self._payload: StreamReader = request.content
        self._length = request.content_length
        self._encoding = request.headers.get("Content-Encoding", "")[:20]
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + timeout
        self._loop.call_at(min(self._loop.time() + self.EVERY, self._deadline), self._check)

    def _check(self) -> None:
        payload = self._payload
        if payload.is_eof() or payload.exception() is not None:
            return
        if self._length is not None and payload.total_raw_bytes >= self._length:
            payload.set_exception(RequestPayloadError(f"Can not decode content-encoding: {self._encoding} (its end)"))
        elif self._loop.time() >= self._deadline:
            payload.set_exception(BodyTimeout())
        else:
            self._loop.call_at(min(self._loop.time() + self.EVERY, self._deadline), self._check)


def _closing(status: int, text: str) -> web.Response:
    response = web.Response(status=status, text=text)
    response.force_close()  # the rest of the body is unreadable or not coming: never reuse the connection
    return response


def _route_name(request: web.Request) -> str:
    """The route's pattern (`/api/groupme/{secret}`), never the raw path: paths carry secrets and junk."""
    route = request.match_info.route
    resource = route.resource
    return f"{request.method} {resource.canonical if resource is not None else '(no route)'}"


def error_middleware(body_timeout: float = BODY_TIMEOUT) -> Callable:
    logged_bugs: set[tuple[str, str]] = set()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        payload = request.content
        if not payload.is_eof():
            _BodyWatch(request, body_timeout)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except BodyTimeout:
            log.warning("%s: the request body did not arrive within %g s; connection closed", _route_name(request), body_timeout)
            return _closing(408, "request body timed out")
        except RequestPayloadError as exc:
            # Content-Encoding gzip/deflate that does not decompress, a chunked body cut short: input.
            reason = str(exc).strip().rsplit("\n", 1)[-1].strip()[:80]
            log.warning("%s: refused a request body that could not be read (%s)", _route_name(request), reason)
            if not payload.is_eof():
                payload.feed_eof()  # the parser stopped at the error: nothing more comes, nothing to drain
            return _closing(400, "malformed request body")
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
    method, bytes a header may not hold): that is input, not a bug. One warning line instead. A body
    that turns out unreadable only after the handler answered without reading it all (aiohttp's
    lingering close drains it) is logged with a traceback too: the handler has spoken, so one debug
    line at most."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            record.msg, record.args = "malformed HTTP request refused (%s)", (type(exc).__name__,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            if isinstance(exc, RequestPayloadError):
                record.msg = "unread rest of a request body dropped (%s)"
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_BAD_HTTP_FILTER = _OneLineForBadHttp()


def create_app(
    startup: Startup,
    hooks: Iterable[RouteHook] = (),
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
) -> web.Application:
    # Metrics outermost, so they count the 400/500 the error guard answers. handler_args reach every
    # connection's RequestHandler, however the app is run (serve, tests).
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[http_metrics.observe_requests, error_middleware(body_timeout)],
        handler_args={"keepalive_timeout": header_timeout, "lingering_time": min(10.0, body_timeout)},
    )
    logging.getLogger("aiohttp.server").addFilter(_BAD_HTTP_FILTER)  # a no-op when already added
    app[STARTUP] = startup
    for hook in hooks:
        hook(app)
    # Innermost, after any middleware a hook added: a channel's headers (the web API's CORS) reach its 503 too.
    app.middlewares.append(gate(startup))
    return app
