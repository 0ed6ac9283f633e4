"""What Table Storage is asked, counted at the SDK's transport (every request, with its partition).

Issue 20.2: opening the store created eleven tables one by one on every start and every `reap` run
(eleven billed 409s when they exist). Issue 18.8 / 25: a sign-in counter was one entity in one
partition shared by every counter, updated by a compare-and-set loop of up to 200 tries.
"""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from azure.data.tables.aio import TableServiceClient

from bot.store.tables import ATTEMPT_ROUNDS, TABLES, TableStore

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=15)


class Recorder:
    """Every request the store's client sends: (method, path, PartitionKey of an insert)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []

    def __call__(self, pipeline_request) -> None:
        r = pipeline_request.http_request
        partition = ""
        if r.method == "POST" and r.body:
            try:
                partition = json.loads(r.body).get("PartitionKey", "")
            except (ValueError, AttributeError):
                pass
        self.requests.append((r.method, r.url.split("?")[0].rsplit("/", 1)[-1], partition))


@pytest.fixture
def recorded(azurite):
    """A store factory on one fresh prefix whose instances record their requests."""
    prefix = azurite.prefix()

    def make() -> tuple[TableStore, Recorder]:
        rec = Recorder()
        return TableStore(TableServiceClient.from_connection_string(azurite.connection_string, raw_request_hook=rec), prefix=prefix), rec

    return make


async def test_opening_makes_one_request_when_the_tables_exist(recorded):
    first, rec = recorded()
    await first.open()  # a fresh account: one look, then the missing tables created (concurrently)
    assert len(rec.requests) == 1 + len(TABLES)
    await first.close()
    again, rec = recorded()
    await again.open()
    try:
        assert len(rec.requests) == 1, rec.requests
        assert await again.get("nothing") is None  # and the store works
    finally:
        await again.close()


async def test_a_flood_on_one_counter_is_a_bounded_number_of_requests(recorded):
    store, rec = recorded()
    await store.open()
    try:
        rec.requests.clear()
        results = await asyncio.gather(*(store.take_attempt("login-acct:victim@example.org", T0, WINDOW, 5) for _ in range(60)))
        assert 1 <= results.count(True) <= 5
        assert len(rec.requests) <= 60 * 2 * ATTEMPT_ROUNDS  # a list and an insert per round: no compare-and-set loop
        while await store.take_attempt("login-acct:victim@example.org", T0, WINDOW, 5):
            pass
        rec.requests.clear()
        assert await store.take_attempt("login-acct:victim@example.org", T0, WINDOW, 5) is False
        assert len(rec.requests) == 1  # a used-up window: one listing, nothing written
    finally:
        await store.close()


async def test_counters_do_not_share_a_partition(recorded):
    store, rec = recorded()
    await store.open()
    try:
        rec.requests.clear()
        await asyncio.gather(*(store.take_attempt(f"login-addr:192.0.2.{i}", T0, WINDOW, 30) for i in range(20)),
                             *(store.take_attempt("login-acct:victim@example.org", T0, WINDOW, 5) for _ in range(20)))
        inserts = [p for method, _, p in rec.requests if method == "POST" and p]
        assert len(set(inserts)) == 21  # one partition per counter (and window)
        flooded = max(set(inserts), key=inserts.count)
        assert sorted(inserts.count(p) for p in set(inserts) if p != flooded) == [1] * 20  # the others never met the flood
    finally:
        await store.close()


def test_the_table_client_reads_proxy_settings_only_when_a_proxy_is_set(monkeypatch):
    """aiohttp's trust_env looks up ~/.netrc and the proxy variables in a thread on every request: only worth it with a proxy."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    conn = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"

    def trusts_env() -> bool:
        transport = TableStore.from_connection_string(conn)._service._client._client._pipeline._transport
        return transport._use_env_settings

    assert trusts_env() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert trusts_env() is True
