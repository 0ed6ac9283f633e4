"""VPN_LOG_FORMAT=json: one JSON object per line, with the session id where there is one, and no secret."""
from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest
from aiohttp import web

from bot.logs import NOISY_LOGGERS, JsonFormatter, RedactSecrets, setup_logging
from bot.wiring import build_http_app
from tests.provisioner.test_host_tunnel import secrets_of
from tests.support.apprun import app_env, console
from tests.support.loopback import serve_on_loopback

FIELDS = ["time", "level", "logger", "message", "session_id", "user", "request_id"]


def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    parsed = [json.loads(line) for line in lines]  # every line parses, or this raises
    for obj in parsed:
        assert list(obj)[: len(FIELDS)] == FIELDS
    return parsed


@pytest.fixture
def captured():
    """A JSON handler on the root logger, formatting in the emitting task's context (as the real one does)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buf
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_console_session_logs_are_json_with_session_ids_and_no_secrets(tmp_path):
    env = app_env(tmp_path / "data", VPN_LOG_FORMAT="json")
    out = tmp_path / "out"
    started = console(["/vpn start"], env, "--out", str(out))
    assert started.returncode == 0, started.stderr
    (conf,) = out.glob("*.conf")
    session_id = conf.stem.removeprefix("vpn-")
    keys = secrets_of(conf)  # read now: the console may delete the file at stop
    stopped = console(["/vpn stop"], env, "--out", str(out))
    assert stopped.returncode == 0, stopped.stderr

    records = json_lines(started.stderr) + json_lines(stopped.stderr)
    about_session = [r for r in records if session_id in r["message"]]
    assert {"requested", "ready", "ended"} <= {word for r in about_session for word in r["message"].split()}
    for r in about_session:
        assert r["session_id"] == session_id, r
    audit = [r for r in records if r["message"].startswith("audit ")]
    assert audit and all(r["user"].startswith("console:") for r in audit)
    assert all(r["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for r in records)

    assert len(keys) == 2  # the private and the preshared key: the scan has something to look for
    for key in keys:
        assert key not in started.stderr and key not in stopped.stderr


def test_a_secret_in_an_exception_is_masked_in_the_json_line(captured):
    log = logging.getLogger("bot.test")
    try:
        raise RuntimeError("bad config:\nPrivateKey = aGVsbG8taGVsbG8taGVsbG8taGVsbG8taGVsbG8tMTI=\n")
    except RuntimeError:
        log.exception("session 0123456789 failed with PresharedKey: c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=")
    (record,) = json_lines(captured.getvalue())
    assert record["session_id"] == "0123456789"
    assert "aGVsbG8" not in json.dumps(record) and "c2VjcmV0" not in json.dumps(record)
    assert "PrivateKey = [redacted]" in record["exception"] and "[redacted]" in record["message"]


async def test_request_id_reaches_every_line_of_that_request(make_runtime, captured):
    runtime = make_runtime(VPN_METRICS_PORT=0)

    def hook(app: web.Application) -> None:
        async def noisy(request: web.Request) -> web.Response:
            logging.getLogger("bot.test").info("handling a request")
            return web.Response(text="ok")

        app.router.add_get("/noisy", noisy)

    app = build_http_app(runtime)
    hook(app)
    runner, base = await serve_on_loopback(app)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/noisy", headers={"X-Request-Id": "req-42"}) as resp:
                assert resp.status == 200
            async with http.get(f"{base}/noisy", headers={"X-Request-Id": "not a valid id\u00e9"}) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    first, second = [r for r in json_lines(captured.getvalue()) if r["message"] == "handling a request"]
    assert first["request_id"] == "req-42"
    assert second["request_id"] and second["request_id"] != first["request_id"] and " " not in second["request_id"]


def test_third_party_loggers_are_quiet_at_info_and_text_stays_the_default(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr("sys.stderr", buf)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").info("Request headers: ...")
        logging.getLogger("bot.test").info("plain text line")
        for name in NOISY_LOGGERS:
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        setup_logging("DEBUG", "json")
        assert logging.getLogger("azure.core.pipeline.policies.http_logging_policy").isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
    (line,) = buf.getvalue().splitlines()
    assert line.endswith(" INFO bot.test: plain text line") and not line.startswith("{")
