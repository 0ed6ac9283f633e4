"""One fresh store per test on each back end (SQLite in tmp_path, Table Storage on Azurite), and a
second instance on the same store (another replica). One contract file per port: test_sessions,
test_dedupe, test_one_time_configs, test_addresses, test_audit_and_workers, test_accounts, test_progress,
test_retention, test_keys, test_governance_data."""
from __future__ import annotations

import pytest

from bot.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "azure-tables"])
def backend(request, tmp_path):
    """A factory of store instances sharing one store (call it twice for two replicas)."""
    if request.param == "sqlite":
        path = tmp_path / "db.sqlite3"
        return lambda: SqliteStore(path)
    from bot.store.tables import TableStore

    server = request.getfixturevalue("azurite")
    prefix = server.prefix()
    return lambda: TableStore.from_connection_string(server.connection_string, prefix=prefix)


@pytest.fixture
async def store(backend):
    s = backend()
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def replica(backend, store):
    """A second instance on `store`'s data."""
    s = backend()
    await s.open()
    yield s
    await s.close()


@pytest.fixture(params=["sqlite", "azure-tables"])
def spec(request, tmp_path) -> dict:
    """How to reach one fresh store, for this process and for a second one (tests/support/store_worker.py)."""
    if request.param == "sqlite":
        return {"store": "sqlite", "path": str(tmp_path / "store.sqlite3")}
    server = request.getfixturevalue("azurite")
    return {"store": "azure-tables", "conn": server.connection_string, "prefix": server.prefix()}


@pytest.fixture
async def stores(spec):
    """Two open instances of one store, as two replicas would hold."""
    from tests.support.store_worker import open_store

    pair = [open_store(spec), open_store(spec)]
    for s in pair:
        await s.open()
    yield pair
    for s in pair:
        await s.close()
