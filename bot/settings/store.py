"""Where sessions and everything else shared live: SQLite in the data folder, or Azure Table Storage."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bot.settings.reader import Reader, SettingsError, public_url, table_prefix

STORES = ("sqlite", "azure-tables")


@dataclass(frozen=True)
class StoreSettings:
    kind: str = "sqlite"
    path: Path = Path("./data/vpn-bot.sqlite3")  # sqlite
    connection_string: str = field(default="", repr=False)  # azure-tables: a secret (account key), never logged
    endpoint: str = ""  # azure-tables with a managed identity
    prefix: str = "vpn"  # azure-tables: one deployment's tables


def read(r: Reader, *, data_dir: Path) -> StoreSettings:
    store = StoreSettings(
        kind=r.choice("VPN_STORE", "sqlite", STORES),
        path=data_dir / "vpn-bot.sqlite3",
        connection_string=r.text("AZURE_STORAGE_CONNECTION_STRING", ""),
        endpoint=r.parse("AZURE_TABLES_ENDPOINT", "", public_url, "an https:// URL such as https://<account>.table.core.windows.net"),
        prefix=r.parse("VPN_TABLE_PREFIX", "vpn", table_prefix, "1-30 letters or digits, starting with a letter"),
    )
    if store.kind == "azure-tables" and not (store.connection_string or store.endpoint):
        raise SettingsError(
            "VPN_STORE=azure-tables needs AZURE_STORAGE_CONNECTION_STRING (account keys or Azurite) or "
            "AZURE_TABLES_ENDPOINT (https://<account>.table.core.windows.net, with a managed identity)"
        )
    return store
