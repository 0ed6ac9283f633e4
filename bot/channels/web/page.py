"""The static page (index.html, app.js, style.css, and config.json: how to sign in) under a strict CSP,
the page that says how to turn the web channel on when it is off, and the headers every API answer
carries (CORS only for configured origins, no caching, no framing).

The page is the same files on a static host (issue 20.9): there the deployment writes config.json
with the API's origin; here the bot answers it from its settings with `"api": ""` (this origin)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from bot.channels.web.config import STATIC_DIR, WebConfig

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


def page_headers(csp: str) -> dict[str, str]:
    return {**COMMON_HEADERS, "Content-Security-Policy": csp, "Cache-Control": "no-cache"}


def page_csp(connect: str = "'self'") -> str:
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        f"connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


class Page:
    """Serves the page's files, read once at start-up, and its config.json."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self._static: dict[str, tuple[bytes, str]] = {}

    def client_config(self) -> dict[str, Any]:
        """config.json: the same shape the deployment writes for a static host (docs/deploy.md)."""
        c = self.config
        entra = {"client_id": c.entra_spa_client_id, "authority": f"{c.entra_authority}/{c.entra_tenant_id}", "scope": c.api_scope}
        return {"api": "", "entra": entra if c.entra_tenant_id and c.entra_spa_client_id else None}

    def load(self) -> None:
        d = self.config.static_dir
        self._static = {
            "/": ((d / "index.html").read_bytes(), "text/html"),
            "/app.js": ((d / "app.js").read_bytes(), "application/javascript"),
            "/style.css": ((d / "style.css").read_bytes(), "text/css"),
            "/config.json": (json.dumps(self.client_config()).encode(), "application/json"),
        }

    def register(self, app: web.Application) -> None:
        for path in ("/", "/app.js", "/style.css", "/config.json"):
            app.router.add_get(path, self._serve)

    def csp(self) -> str:
        connect = "'self'"
        if self.config.entra_tenant_id:
            connect += " " + _origin(self.config.entra_authority)
        return page_csp(connect)

    async def _serve(self, request: web.Request) -> web.Response:
        body, ctype = self._static[request.path]
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=page_headers(self.csp()))


OFF_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>VPN: web sign-in is not configured</title>
  {style}
</head>
<body>
  <main>
    <h1>The web sign-in is not configured</h1>
    <p>This VPN bot is running, but its web page and API are off: they need
    <code>VPN_LOCAL_AUTH_SECRET</code>, a random secret of at least 32 characters (the same on every
    replica, kept as secret as a password).</p>
    <p>Generate one with either of:</p>
    <pre><code>python3 -c 'import secrets; print(secrets.token_urlsafe(32))'
openssl rand -base64 32</code></pre>
    <p>Put it in the bot's settings (for example <code>VPN_LOCAL_AUTH_SECRET=&lt;the secret&gt;</code> in
    <code>.env</code>) and restart the bot. Then add a local account with
    <code>vpn-bot users add you@example.org</code> and allow it in <code>VPN_USERS</code>, or set
    <code>VPN_ENTRA_*</code> for Microsoft sign-in. docs/web.md has the details.</p>
  </main>
</body>
</html>
"""


class WebOffPage:
    """`/` when the web channel is off (no VPN_LOCAL_AUTH_SECRET): what is missing and how to turn it
    on, instead of a bare 404. Static, no script, the page's own CSP and headers."""

    def __init__(self, static_dir: Path = STATIC_DIR) -> None:
        css = static_dir / "style.css"
        self._css = css.read_bytes() if css.is_file() else None
        link = '<link rel="stylesheet" href="/style.css">' if self._css is not None else ""
        self._html = OFF_PAGE.replace("{style}", link).encode()

    def register(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        if self._css is not None:
            app.router.add_get("/style.css", self._style)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._html, content_type="text/html", charset="utf-8", headers=page_headers(page_csp()))

    async def _style(self, request: web.Request) -> web.Response:
        assert self._css is not None
        return web.Response(body=self._css, content_type="text/css", charset="utf-8", headers=page_headers(page_csp()))


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
