"""The one-time claim page: plain HTML and CSS, readable on a phone, no scripts, no external assets.

Every page carries one inline <style> allowed by a CSP nonce; images are data: URIs only.
"""
from __future__ import annotations

import base64
from html import escape

STYLE = """
:root { color-scheme: light dark; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; padding: 1.5rem 1rem;
       display: flex; justify-content: center; }
main { max-width: 32rem; width: 100%; }
h1 { font-size: 1.4rem; margin: 0 0 1rem; }
p { margin: 0 0 1rem; }
.state { border-radius: .5rem; padding: 1rem; margin-bottom: 1rem; background: rgba(127,127,127,.12); }
button, .button { display: inline-block; font: inherit; font-weight: 600; padding: .8rem 1.4rem; border-radius: .5rem;
       border: 0; background: #2563eb; color: #fff; text-decoration: none; cursor: pointer; }
img.qr { width: 100%; max-width: 22rem; height: auto; background: #fff; padding: .5rem; border-radius: .5rem;
         image-rendering: pixelated; display: block; margin: 0 auto 1rem; }
pre { overflow-x: auto; font-size: .8rem; padding: .75rem; border-radius: .5rem; background: rgba(127,127,127,.12); }
small { opacity: .75; }
"""

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def csp(nonce: str) -> str:
    return (
        "default-src 'none'; img-src data:; "
        f"style-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


def _page(title: str, body: str, nonce: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"robots\" content=\"noindex, nofollow\">"
        f"<title>{escape(title)}</title><style nonce=\"{escape(nonce)}\">{STYLE}</style></head>"
        f"<body><main><h1>{escape(title)}</h1>{body}</main></body></html>\n"
    )


def ready_page(action: str, nonce: str, minutes_left: int) -> str:
    """GET shows only a button: link previews and scanners that fetch the link consume nothing."""
    body = (
        "<div class=\"state\"><p>Your WireGuard configuration is waiting. It can be revealed <strong>once</strong>, "
        f"within {minutes_left} minute(s). Open it on the device you will use, or next to it to scan the QR code.</p></div>"
        f"<form method=\"post\" action=\"{escape(action)}\"><button type=\"submit\" id=\"reveal\">Reveal my VPN config</button></form>"
    )
    return _page("Your VPN config", body, nonce)


def login_page(login_url: str, nonce: str) -> str:
    body = (
        "<div class=\"state\"><p>To make sure this link reached the right person, log in with GroupMe first.</p></div>"
        f"<a class=\"button\" id=\"login\" href=\"{escape(login_url)}\">Log in with GroupMe</a>"
    )
    return _page("Confirm it is you", body, nonce)


def config_page(tunnel_name: str, config: str, qr_png: bytes, nonce: str) -> str:
    qr = base64.b64encode(qr_png).decode()
    conf = base64.b64encode(config.encode()).decode()
    body = (
        "<p>In the WireGuard app: <strong>+</strong> → <em>Scan from QR code</em>, or download the file and import it.</p>"
        f"<img class=\"qr\" id=\"qr\" alt=\"WireGuard QR code\" src=\"data:image/png;base64,{qr}\">"
        f"<p><a class=\"button\" id=\"download\" download=\"{escape(tunnel_name)}.conf\" "
        f"href=\"data:application/octet-stream;base64,{conf}\">Download {escape(tunnel_name)}.conf</a></p>"
        f"<details><summary>Show the configuration text</summary><pre>{escape(config)}</pre></details>"
        "<p><small>This page is not stored anywhere. The link no longer works. Keep the file private: "
        "it holds your private key.</small></p>"
    )
    return _page("Your VPN config", body, nonce)


def message_page(title: str, text: str, nonce: str) -> str:
    return _page(title, f"<div class=\"state\"><p>{escape(text)}</p></div>", nonce)


USED = ("Already used", "This link has already been used. Each link works once. If that was not you, stop the session with /vpn stop and start a new one.")
EXPIRED = ("Link expired", "This link has expired or is not valid. Use /vpn status in the group, or /vpn start for a new session.")
NOT_YOURS = ("Not your link", "This link belongs to someone else. Ask for your own with /vpn start.")
