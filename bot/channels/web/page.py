"""The static page (index.html with its sign-in settings filled in, app.js, style.css) under a strict CSP,
and the headers every API answer carries (CORS only for configured origins, no caching, no framing)."""
from __future__ import annotations

import html
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from bot.channels.web.config import WebConfig

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Page:
    """Serves the page's three files, read once at start-up."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self._static: dict[str, tuple[bytes, str]] = {}

    def load(self) -> None:
        c, d = self.config, self.config.static_dir
        index = (d / "index.html").read_text()
        entra = bool(c.entra_tenant_id)
        values = {
            "ENTRA_CLIENT_ID": c.entra_spa_client_id if entra else "",
            "ENTRA_AUTHORITY": f"{c.entra_authority}/{c.entra_tenant_id}" if entra else "",
            "ENTRA_SCOPE": c.api_scope if entra else "",
        }
        for name, value in values.items():
            index = index.replace("{{" + name + "}}", html.escape(value, quote=True))
        self._static = {
            "/": (index.encode(), "text/html"),
            "/app.js": ((d / "app.js").read_bytes(), "application/javascript"),
            "/style.css": ((d / "style.css").read_bytes(), "text/css"),
        }

    def register(self, app: web.Application) -> None:
        for path in ("/", "/app.js", "/style.css"):
            app.router.add_get(path, self._serve)

    def csp(self) -> str:
        connect = "'self'"
        if self.config.entra_tenant_id:
            connect += " " + _origin(self.config.entra_authority)
        return (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
            f"connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )

    async def _serve(self, request: web.Request) -> web.Response:
        body, ctype = self._static[request.path]
        headers = {**COMMON_HEADERS, "Content-Security-Policy": self.csp(), "Cache-Control": "no-cache"}
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)


class ApiHeaders:
    """CORS for the configured origins and the API's security headers, on exactly the routes that
    `route` wraps (the chat webhooks and the VM callback never get them); preflights answered per path."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config

    def _allowed(self, request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin and origin.lower() in self.config.cors_origins else None

    def route(self, handler: Handler, *, cacheable: bool = False) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            resp = await handler(request)
            resp.headers.update(COMMON_HEADERS)
            if not cacheable:
                resp.headers.update(NO_STORE)
            resp.headers["Vary"] = "Origin"
            origin = self._allowed(request)
            if origin:
                resp.headers["Access-Control-Allow-Origin"] = origin
                resp.headers["Access-Control-Expose-Headers"] = "Location, Retry-After, Content-Disposition"
            return resp

        return wrapped

    async def preflight(self, request: web.Request) -> web.Response:
        origin = self._allowed(request)
        if "Access-Control-Request-Method" not in request.headers:
            return web.Response(status=204, headers={**NO_STORE, "Allow": "GET, POST, DELETE, OPTIONS"})
        if origin is None:
            return web.Response(status=403, text="origin not allowed", headers=NO_STORE)
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, POST, DELETE",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        })
