"""The store section: validated, and it selects the back end."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_store_settings_are_validated_and_select_the_back_end(tmp_path):
    from bot.settings import Settings, SettingsError
    from bot.store.sqlite import SqliteStore
    from bot.store.tables import TableStore
    from bot.wiring import make_store

    base = {"VPN_DATA_DIR": str(tmp_path)}
    assert isinstance(make_store(Settings.from_env(base).store), SqliteStore)
    with pytest.raises(SettingsError, match="AZURE_STORAGE_CONNECTION_STRING"):
        Settings.from_env({**base, "VPN_STORE": "azure-tables"})
    for bad in ("1vpn", "vpn-bot", "x" * 31):
        with pytest.raises(SettingsError, match="VPN_TABLE_PREFIX"):
            Settings.from_env({**base, "VPN_TABLE_PREFIX": bad})
    with pytest.raises(SettingsError, match="AZURE_TABLES_ENDPOINT"):
        Settings.from_env({**base, "VPN_STORE": "azure-tables", "AZURE_TABLES_ENDPOINT": "http://example.org"})
    settings = Settings.from_env({**base, "VPN_STORE": "azure-tables", "AZURE_TABLES_ENDPOINT": "https://acct.table.core.windows.net"})
    class Credential:  # never DefaultAzureCredential in tests
        async def get_token(self, *scopes, **kw):
            raise AssertionError("not called: nothing is sent")

    store = make_store(settings.store, credential=Credential())
    assert isinstance(store, TableStore) and store._credential is None  # injected: not ours to close
    assert repr(Settings.from_env({**base, "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=sekrit"})).count("sekrit") == 0
