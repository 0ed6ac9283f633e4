"""Session <-> plain values (str, int, float, bool, None), derived from the dataclass fields.

Both back ends store what this produces, so a new field on `Session` needs no change in either:
SQLite adds the column on open, Table Storage simply gains a property. Also `store_key`: how both
stores key a value that came from outside (bounded and injective).
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
import typing
from datetime import datetime
from typing import Any

from bot.messages import ConversationRef
from bot.store.model import Session

STORE_MANAGED = frozenset({"version", "stored_due_at"})  # set by the store on every read and write, never a property of its own


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # str, int, float, bool, time, enum, conversation, json
    required: bool  # no default in the dataclass
    default: Any
    optional: bool  # None is a valid value
    enum_type: type | None = None


def _spec(f: dataclasses.Field, hint: Any) -> FieldSpec:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
    if base is bool:
        kind = "bool"
    elif base is int:
        kind = "int"
    elif base is float:
        kind = "float"
    elif base is str:
        kind = "str"
    elif base is datetime:
        kind = "time"
    elif isinstance(base, type) and issubclass(base, enum.Enum):
        return FieldSpec(f.name, "enum", required, default, optional, base)
    elif base is ConversationRef:
        kind = "conversation"
    else:
        kind = "json"
    return FieldSpec(f.name, kind, required, default, optional)


def _specs() -> tuple[FieldSpec, ...]:
    hints = typing.get_type_hints(Session)
    return tuple(_spec(f, hints[f.name]) for f in dataclasses.fields(Session) if f.name not in STORE_MANAGED)


FIELDS: tuple[FieldSpec, ...] = _specs()


def encode_value(spec: FieldSpec, value: Any) -> Any:
    if value is None:
        return None
    if spec.kind == "time":
        return value.isoformat()
    if spec.kind == "enum":
        return value.value
    if spec.kind == "conversation":
        return value.to_json()
    if spec.kind == "json":
        return json.dumps(value, sort_keys=True, default=str)
    if spec.kind == "float":
        return float(value)
    return value


def decode_value(spec: FieldSpec, raw: Any) -> Any:
    if raw is None or (raw == "" and spec.kind in ("time", "enum", "conversation", "json")):
        return None if spec.optional or spec.required else spec.default
    if spec.kind == "time":
        return raw if isinstance(raw, datetime) else datetime.fromisoformat(raw)
    if spec.kind == "enum":
        return spec.enum_type(raw)  # type: ignore[misc]
    if spec.kind == "conversation":
        return ConversationRef.from_json(raw)
    if spec.kind == "json":
        return json.loads(raw)
    if spec.kind == "bool":
        return bool(raw)
    if spec.kind == "int":
        return int(raw)
    if spec.kind == "float":
        return float(raw)
    return str(raw)


def encode(session: Session) -> dict[str, Any]:
    """Every stored field as a plain value (None for an unset optional)."""
    return {spec.name: encode_value(spec, getattr(session, spec.name)) for spec in FIELDS}


def decode(values: typing.Mapping[str, Any], version: str) -> Session:
    """A session from stored values; a field the record predates takes its default."""
    out: dict[str, Any] = {}
    for spec in FIELDS:
        if spec.name in values:
            out[spec.name] = decode_value(spec, values[spec.name])
        elif not spec.required:
            out[spec.name] = spec.default
    return Session(**out, version=version, stored_due_at=out.get("due_at"))


# ----- keys from outside input (emails, identities, message ids, client addresses) ------------------

KEY_BYTES = 255  # a key's escaped form up to this many UTF-8 bytes is kept readable; longer ones are hashed
_UNSAFE = re.compile("[/\\\\#?%\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")  # what store_key percent-escapes, each character as its UTF-8 bytes
_HASHED = "%h"  # never produced by the escaping (a '%' there is always followed by two hex digits)


def store_key(text: str) -> str:
    """The key both stores file an outside value under: bounded and injective.

    Table Storage keys may not hold / \\ # ? or control characters and are limited in size (1 KiB on
    Azure, 512 characters on Azurite), so those characters (and %, surrogates, non-characters) are
    percent-escaped as UTF-8; an escaped form longer than KEY_BYTES becomes `%h` + SHA-256 of the
    whole value. Distinct values never share a key: an escaped form never starts with `%h`, and
    hashes differ wherever SHA-256 does. Never truncates.
    """
    escaped = _UNSAFE.sub(_percent_escaped, text)  # the common case (ids, channels, emails) has nothing to escape
    if len(escaped) <= KEY_BYTES // 4 or len(escaped.encode("utf-8")) <= KEY_BYTES:  # 63 characters are at most 252 bytes
        return escaped
    return _HASHED + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _percent_escaped(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", "surrogatepass"))


def refusal_sample(user: str, command: str, reason: str, at: datetime) -> tuple[datetime, str]:
    """The hour holding `at` and a digest of (user, command, reason): the one audit row that counts such
    refusals (a stranger's flood is one row per route an hour; a member's refused decisions stay apart)."""
    seconds = int(at.timestamp())
    hour = datetime.fromtimestamp(seconds - seconds % 3600, tz=at.tzinfo)
    digest = hashlib.sha256(f"{user}\0{command}\0{reason}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return hour, digest
