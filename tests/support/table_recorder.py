"""What a TableStore asks Table Storage, request by request, recorded at the SDK's transport (a
`raw_request_hook`): the table, the kind of request, the partition it names and a query's filter.

Issue 25 (no hot partition): tests count the writes per partition and check that work on one session or
owner reads by key or by a range of partition keys, never a filter over a whole table.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from azure.data.tables.aio import TableServiceClient

_KEYS = re.compile(r"^([^(]+)\(PartitionKey='((?:[^']|'')*)',RowKey='(?:[^']|'')*'\)$")
_BATCH_PART = re.compile(rb"(?:PUT|POST|DELETE|PATCH|MERGE) \S*/([^/(\s]+)\(PartitionKey='((?:[^']|'')*)'")
_BOUNDED = re.compile(r"PartitionKey eq |PartitionKey ge .*PartitionKey l[te] ")
WRITES = frozenset({"insert", "update", "delete", "batch"})


@dataclass(frozen=True)
class TableRequest:
    table: str  # without the store's prefix
    kind: str  # insert, get, query, update (PUT/PATCH/MERGE: replace, merge, upsert), delete, batch, tables
    partition: str  # of an insert, a keyed request or a batch; "" for a query
    filter: str = ""  # a query's $filter, decoded

    @property
    def keyed(self) -> bool:
        """A request on one entity or partition, or a query bounded by partition key (eq, or a range)."""
        return self.kind != "query" or bool(_BOUNDED.search(self.filter))


class TableRecorder:
    """Records every request of the clients it hooks (only this store's tables: `prefix`)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.requests: list[TableRequest] = []

    def __call__(self, pipeline_request) -> None:
        r = pipeline_request.http_request
        path, _, query = r.url.partition("?")
        last = path.rsplit("/", 1)[-1]
        if last == "$batch":
            body = r.body if isinstance(r.body, bytes) else str(r.body or "").encode()
            parts = {(unquote(t.decode()), unquote(p.decode()).replace("''", "'")) for t, p in _BATCH_PART.findall(body)}
            for table, partition in sorted(parts)[:1]:
                self._add(table, "batch", partition)
            return
        if last.endswith("()"):
            found = parse_qs(query).get("$filter", [""])[0]
            self._add(last[:-2], "query", "", found)
            return
        keyed = _KEYS.match(unquote(last))
        if keyed:
            kind = {"GET": "get", "DELETE": "delete"}.get(r.method, "update")
            self._add(keyed.group(1), kind, keyed.group(2).replace("''", "'"))
            return
        if r.method == "POST" and last != "Tables":
            try:
                partition = json.loads(r.body).get("PartitionKey", "")
            except (TypeError, ValueError, AttributeError):
                partition = ""
            self._add(last, "insert", partition)
            return
        self._add(last, "tables", "")

    def _add(self, table: str, kind: str, partition: str, found: str = "") -> None:
        if table.startswith(self.prefix):
            self.requests.append(TableRequest(table[len(self.prefix):], kind, partition, found))

    def clear(self) -> None:
        self.requests.clear()

    def scans(self) -> list[TableRequest]:
        """Queries that name no partition key (or only one side of a range): they read a whole table."""
        return [r for r in self.requests if not r.keyed]

    def writes(self, table: str | None = None) -> Counter[str]:
        """Writes per partition (of one table, or `table|partition` over all)."""
        return Counter(r.partition if table else f"{r.table}|{r.partition}" for r in self.requests
                       if r.kind in WRITES and (table is None or r.table == table))


def recorded_store(connection_string: str, prefix: str):
    """A TableStore on `prefix` whose every request is recorded, and its recorder."""
    from bot.store.tables import TableStore

    recorder = TableRecorder(prefix)
    service = TableServiceClient.from_connection_string(connection_string, raw_request_hook=recorder)
    return TableStore(service, prefix=prefix), recorder
