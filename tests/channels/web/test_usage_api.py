"""GET /api/usage (JSON, and CSV read back with the csv module) and GET /api/audit (issue 23): admins only,
real HTTP on loopback, the dryrun provider, a real store."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from bot.store.ports import UsageRecord
from bot.store.usage_codec import USAGE_FIELDS
from tests.support.webharness import Client, WebApp

ALICE, BOB, ROOT = "alice@example.org", "bob@example.org", "root@example.org"
NOV = datetime(2026, 11, 3, 9, 30, tzinfo=timezone.utc)


@pytest.fixture
async def app(tmp_path):
    app = await WebApp(tmp_path / "data", VPN_USERS=f"local:{ALICE},local:{BOB}", VPN_ADMINS=f"email:{ROOT}", VPN_HOURLY_COST="0.6", VPN_METRICS_PORT="0").start()
    http = aiohttp.ClientSession()
    app.http = http
    yield app
    await http.close()
    await app.close()


async def client(app, email) -> Client:
    await app.add_user(email)
    return await Client(app.http, app.base).login(email)


def record(sid: str, at: datetime, owner: str, label: str, **changes) -> UsageRecord:
    values = dict(session_id=sid, owner=owner, owner_label=label, channel="teams", provider="azure", region="westeurope",
                  requested_at=at, ready_at=at + timedelta(minutes=2), ended_at=at + timedelta(minutes=62), minutes=60.0, cost=0.0832,
                  bytes_in=12_400_000, bytes_out=3_100_000, end_reason="expired", detail="time is up")
    values.update(changes)
    return UsageRecord(**values)


async def test_admins_get_the_usage_rows_as_json_and_as_csv(app):
    root, alice = await client(app, ROOT), await client(app, ALICE)
    # A real session through the API, stopped: its record is written by the engine.
    status, _, s = await alice.json("POST", "/api/sessions", json={"minutes": 20})
    await alice.wait_for(f"/api/sessions/{s['id']}", lambda b: b["state"] == "ready")
    await alice.json("DELETE", f"/api/sessions/{s['id']}")
    await app.settle()
    # And two written as earlier months' sessions would have been, one with text a spreadsheet would run.
    store = app.runtime.store
    await store.put_usage(record("0000000001", NOV, "teams:kim", "kim@example.org"))
    await store.put_usage(record("0000000002", NOV + timedelta(days=1), "teams:lee", '=HYPERLINK("x"),"lee"', end_reason="idle",
                                 request_reason="line one\nline two, with a comma", decided_by="root@example.org"))

    status, _, body = await root.json("GET", "/api/usage?from=2026-11-01&to=2026-11-30")
    assert status == 200, body
    assert body["from"] == "2026-11-01T00:00:00Z" and body["to"] == "2026-12-01T00:00:00Z"
    assert [r["session_id"] for r in body["rows"]] == ["0000000001", "0000000002"]
    assert body["totals"]["sessions"] == 2 and body["totals"]["endings"] == {"expired": 1, "idle": 1}
    assert body["rows"][0]["requested_at"] == "2026-11-03T09:30:00Z" and body["rows"][0]["bytes_in"] == 12_400_000
    assert len(body["days"]) == 30 and body["days"][2] == {"day": "2026-11-03", "sessions": 1, "minutes": 60.0, "cost": 0.0832,
                                                          "bytes_in": 12_400_000, "bytes_out": 3_100_000, "endings": {"expired": 1}}
    assert sorted(u["user"] for u in body["users"]) == ["teams:kim", "teams:lee"]  # equal costs: by label

    status, _, mine = await root.json("GET", "/api/usage")  # the last 30 days: the real session
    assert status == 200 and [(r["session_id"], r["end_reason"], r["owner"]) for r in mine["rows"]] == [(s["id"], "stopped", f"local:{ALICE}")]
    status, _, only = await root.json("GET", "/api/usage?from=2026-11-01&to=2026-11-30&user=kim@example.org")
    assert [r["session_id"] for r in only["rows"]] == ["0000000001"]

    status, headers, raw = await root.call("GET", "/api/usage?from=2026-11-01&to=2026-11-30", headers={"Accept": "text/csv"})
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"] == 'attachment; filename="vpn-usage-20261101-20261201.csv"'
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == USAGE_FIELDS and len(rows) == 3
    parsed = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert parsed[0]["owner_label"] == "kim@example.org" and parsed[0]["bytes_in"] == "12400000" and parsed[0]["ready_at"] == "2026-11-03T09:32:00Z"
    assert parsed[0]["decided_at"] == "" and float(parsed[0]["cost"]) == 0.0832
    assert parsed[1]["owner_label"] == '\'=HYPERLINK("x"),"lee"'  # text, never a formula
    assert parsed[1]["request_reason"] == "line one\nline two, with a comma" and parsed[1]["end_reason"] == "idle"


async def test_users_are_refused_and_bad_input_is_a_400(app):
    root, alice = await client(app, ROOT), await client(app, ALICE)
    for path in ("/api/usage", "/api/audit"):
        status, _, body = await alice.json("GET", path)
        assert status == 403 and body["code"] == "admin_only", body
        status, _, _ = await Client(app.http, app.base).json("GET", path)
        assert status == 401
    for path in ("/api/usage?from=yesterday", "/api/usage?from=2026-11-30&to=2026-11-01", "/api/usage?from=2020-01-01&to=2026-01-01",
                 "/api/usage?to=9999-12-31", "/api/usage?user=" + "x" * 300, "/api/audit?limit=0", "/api/audit?limit=5000",
                 "/api/audit?limit=ten", "/api/audit?from=2026-02-30"):
        status, _, body = await root.json("GET", path)
        assert status == 400 and body["error"], (path, body)
    refused = [(e.user, e.command, e.reason) for e in await app.runtime.store.audit_log() if not e.allowed]
    assert [r[2] for r in refused] == ["admin only"] * 2
    assert sorted(r[1].split(" ")[0] for r in refused) == ["audit", "usage"] and all(r[0] == f"local:{ALICE}" for r in refused)


async def test_admins_read_the_audit_log_filtered(app):
    root, alice, bob = await client(app, ROOT), await client(app, ALICE), await client(app, BOB)
    for who in (alice, bob, alice):
        await who.json("POST", "/api/sessions", json={"minutes": 5})
        await app.settle()
    await alice.json("GET", "/api/audit")  # refused, and audited
    status, _, body = await root.json("GET", f"/api/audit?user=local:{ALICE}")
    assert status == 200
    got = [(e["user"], e["command"], e["allowed"], e["reason"]) for e in body["entries"]]
    assert got == [(f"local:{ALICE}", "audit 100", False, "admin only")] + [(f"local:{ALICE}", "start 5", True, "user")] * 2  # newest first; never bob
    assert all(e["at"].endswith("Z") for e in body["entries"])
    status, _, one = await root.json("GET", "/api/audit?limit=1")
    assert len(one["entries"]) == 1 and one["entries"][0]["command"].startswith("audit")  # root's own read, the newest
    status, _, none = await root.json("GET", "/api/audit?from=2000-01-01&to=2000-01-02")
    assert none == {"entries": []}


async def test_the_openapi_document_describes_both(app):
    status, _, doc = await Client(app.http, app.base).json("GET", "/api/openapi.json")
    assert {"/api/usage", "/api/audit"} <= set(doc["paths"])
    usage = doc["paths"]["/api/usage"]["get"]
    assert {"application/json", "text/csv"} <= set(usage["responses"]["200"]["content"])
    assert {p["name"] for p in usage["parameters"]} == {"from", "to", "user"}
    assert {p["name"] for p in doc["paths"]["/api/audit"]["get"]["parameters"]} == {"from", "to", "user", "limit"}
    assert list(doc["components"]["schemas"]["UsageRecord"]["properties"]) == list(USAGE_FIELDS)


async def test_the_session_view_shows_the_tunnel_to_its_owner_and_admins(app):
    root, alice, bob = await client(app, ROOT), await client(app, ALICE), await client(app, BOB)
    status, _, s = await alice.json("POST", "/api/sessions", json={"minutes": 20})
    s = await alice.wait_for(f"/api/sessions/{s['id']}", lambda b: b["state"] == "ready")
    assert s["tunnel"] == "not connected yet" and s["handshake_at"] is None
    await app.runtime.service.sweep()  # the dryrun provider's simulated client has connected
    _, _, s = await alice.json("GET", f"/api/sessions/{s['id']}")
    assert s["tunnel"].startswith("connected — handshake ") and "↓ 0.0 MB ↑ 0.0 MB" in s["tunnel"] and s["handshake_at"].endswith("Z")
    _, _, listed = await root.json("GET", "/api/sessions")
    assert listed["sessions"][0]["tunnel"].startswith("connected")
    status, _, theirs = await bob.json("GET", f"/api/sessions/{s['id']}")
    assert status == 404  # not his
