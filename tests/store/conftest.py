"""One fresh store per test on each back end (SQLite in tmp_path, Table Storage on Azurite), and a
second instance on the same store (another replica)."""
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
