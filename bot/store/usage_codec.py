"""UsageRecord <-> plain values (str, int, float, None), for both stores: a new field needs no change in either."""
from __future__ import annotations

import dataclasses
import typing
from datetime import datetime
from typing import Any

from bot.store.ports import UsageRecord

TEXT_LIMIT = 300  # a label, a reason, a sentence: bounded as the audit log's texts are
_HINTS = typing.get_type_hints(UsageRecord)
USAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(UsageRecord))
TIME_FIELDS = frozenset(name for name in USAGE_FIELDS if datetime in (typing.get_args(_HINTS[name]) or (_HINTS[name],)))


def month_of(at: datetime) -> str:
    """A record's partition: the month its session was requested (UTC), e.g. 2026-11."""
    return f"{at.year:04d}-{at.month:02d}"


def encode_usage(r: UsageRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in USAGE_FIELDS:
        value = getattr(r, name)
        if name in TIME_FIELDS:
            value = value.isoformat() if value is not None else None
        elif isinstance(value, str):
            value = value[:TEXT_LIMIT]
        out[name] = value
    return out


def decode_usage(values: typing.Mapping[str, Any]) -> UsageRecord:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(UsageRecord):
        raw = values.get(f.name)
        if f.name in TIME_FIELDS:
            out[f.name] = datetime.fromisoformat(raw) if raw else None
        elif raw is None:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"usage record without {f.name}")
            out[f.name] = f.default
        elif _HINTS[f.name] is int:
            out[f.name] = int(raw)
        elif _HINTS[f.name] is float:
            out[f.name] = float(raw)
        else:
            out[f.name] = str(raw)
    return UsageRecord(**out)
