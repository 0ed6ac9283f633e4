"""Reading a JSON body within bounds, and the API's error shape."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

MAX_JSON = 16 * 1024


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any] | web.Response:
    if request.content_length is not None and request.content_length > MAX_JSON:
        return json_error(413, "Request body too large.")
    raw = b""
    while len(raw) <= MAX_JSON:  # read(n) returns what has arrived so far, not the whole body
        piece = await request.content.read(MAX_JSON + 1 - len(raw))
        if not piece:
            break
        raw += piece
    if len(raw) > MAX_JSON:
        return json_error(413, "Request body too large.")
    if not raw.strip():
        return {} if optional else json_error(400, "Send a JSON object.")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # 16 KiB of "[" nests deeper than json's recursion limit
        return json_error(400, "The body is not valid JSON.")
    if not isinstance(body, dict):
        return json_error(400, "Send a JSON object.")
    return body
