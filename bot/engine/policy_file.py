"""Per-group policy: the file `VPN_POLICY_FILE` names (TOML, read with the standard library).

Ordered `[[policy]]` entries; the first whose `match` names a person is theirs, and every value it
leaves out comes from the environment (VPN_MAX_SESSION_MINUTES, VPN_APPROVAL, …). Matching an entry
also lets the person in, as a line of VPN_USERS would. Example (docs/governance.md explains it):

    [[policy]]
    name = "contractors"
    match = ["group:6f1c…", "domain:partner.example"]
    max_minutes = 60
    regions = ["westeurope"]
    allowed_ips = "10.0.0.0/8, 192.168.0.0/16"
    approval = "always"
    approvers = ["group:0b7e…"]

A bad file is one line naming the entry and the key (`PolicyFileError`): start-up stops on it; a
reload that finds one keeps the policy it had.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bot.access import Rule, RuleError, group_ids, parse_rules
from provisioner.wireguard import parse_allowed_ips

log = logging.getLogger(__name__)
LONGEST = 7 * 24 * 60  # minutes: the bound of every length a file may give
KEYS = ("name", "match", "max_minutes", "default_minutes", "regions", "providers", "allowed_ips", "approval", "approvers")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


class PolicyFileError(ValueError):
    """One line, naming the file, the entry and what is wrong."""


@dataclass(frozen=True)
class Approval:
    """`never`, `always`, or `over:<minutes>`: only sessions longer than that need an approval."""

    kind: str
    minutes: int = 0

    def needed(self, minutes: int) -> bool:
        return self.kind == "always" or (self.kind == "over" and minutes > self.minutes)

    def __str__(self) -> str:
        return f"over:{self.minutes}" if self.kind == "over" else self.kind


NEVER = Approval("never")


def parse_approval(text: str) -> Approval:
    """Raises ValueError for anything but never | always | over:<1..10080>."""
    value = text.strip().lower()
    if value in ("never", "always"):
        return Approval(value)
    kind, _, minutes = value.partition(":")
    if kind == "over" and minutes.isascii() and minutes.isdigit() and 1 <= int(minutes) <= LONGEST:
        return Approval("over", int(minutes))
    raise ValueError(text)


@dataclass(frozen=True)
class PolicyEntry:
    """One `[[policy]]` entry; None means "the environment's value"."""

    label: str  # how messages name it: `policy #2 ("contractors")`
    match: tuple[Rule, ...]
    name: str = ""
    max_minutes: int | None = None
    default_minutes: int | None = None
    regions: tuple[str, ...] | None = None
    providers: tuple[str, ...] | None = None
    allowed_ips: tuple[str, ...] | None = None
    approval: Approval | None = None
    approvers: tuple[Rule, ...] | None = None
    approvers_text: str | None = None  # as written (VPN_USERS syntax): kept with each request

    @property
    def group_ids(self) -> frozenset[str]:
        return group_ids((*self.match, *(self.approvers or ())))


def parse_policy(text: str, source: str = "VPN_POLICY_FILE") -> tuple[PolicyEntry, ...]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(doc) - {"policy"})
    if extra:
        raise PolicyFileError(f"{source}: unknown top-level key {extra[0]!r}: the file holds [[policy]] entries only")
    entries = doc.get("policy", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PolicyFileError(f"{source}: 'policy' must be [[policy]] tables")
    return tuple(_entry(raw, n, source) for n, raw in enumerate(entries, 1))


def load_policy(path: Path) -> tuple[PolicyEntry, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyFileError(f"VPN_POLICY_FILE {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"VPN_POLICY_FILE {path}: cannot read it ({type(exc).__name__})") from None
    return parse_policy(text, f"VPN_POLICY_FILE {path}")


def _entry(raw: dict[str, Any], n: int, source: str) -> PolicyEntry:
    name = raw.get("name", "")
    label = f"policy #{n}" + (f" ({name!r})" if isinstance(name, str) and name else "")

    def bad(key: str, expects: str) -> PolicyFileError:
        return PolicyFileError(f"{source}: {label}: {key} {expects}")

    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise bad(unknown[0], f"is not a key of a policy entry (known: {', '.join(KEYS)})")
    if not isinstance(name, str) or (name and not _NAME.fullmatch(name)):
        raise bad("name", "must be 1-40 lowercase letters, digits or '-'")
    if "match" not in raw:
        raise bad("match", "is missing: the rules (VPN_USERS syntax) this entry is for")
    match = _rules(raw["match"], lambda e: bad("match", e))
    max_minutes = _minutes(raw, "max_minutes", bad)
    default_minutes = _minutes(raw, "default_minutes", bad)
    if max_minutes is not None and default_minutes is not None and default_minutes > max_minutes:
        raise bad("default_minutes", f"({default_minutes}) must not exceed max_minutes ({max_minutes})")
    regions = _names(raw, "regions", bad)
    providers = _names(raw, "providers", bad)
    allowed_ips = None
    if "allowed_ips" in raw:
        value = raw["allowed_ips"]
        text = ", ".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
        if not isinstance(text, str):
            raise bad("allowed_ips", 'must be networks like "10.0.0.0/8, 192.168.0.0/16"')
        try:
            allowed_ips = parse_allowed_ips(text)
        except ValueError as exc:
            raise bad("allowed_ips", f"is not valid: {exc}") from None
    approval = None
    if "approval" in raw:
        try:
            approval = parse_approval(raw["approval"]) if isinstance(raw["approval"], str) else None
        except ValueError:
            pass
        if approval is None:
            raise bad("approval", "must be never, always or over:<minutes>")
    approvers = approvers_text = None
    if "approvers" in raw:
        approvers = _rules(raw["approvers"], lambda e: bad("approvers", e))
        value = raw["approvers"]
        approvers_text = ", ".join(value) if isinstance(value, list) else str(value)
    return PolicyEntry(label, match, name, max_minutes, default_minutes, regions, providers, allowed_ips, approval, approvers, approvers_text)


def _rules(value: Any, bad: Callable[[str], PolicyFileError]) -> tuple[Rule, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise bad('must be a list of rules, e.g. ["group:<object id>", "domain:example.org"]')
    try:
        rules = parse_rules(", ".join(value))
    except RuleError as exc:
        raise bad(f"has a bad rule: {exc}") from None
    if not rules:
        raise bad("names nobody")
    return rules


def _minutes(raw: dict[str, Any], key: str, bad: Callable[[str, str], PolicyFileError]) -> int | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= LONGEST:
        raise bad(key, f"must be a whole number of minutes from 1 to {LONGEST}")
    return value


def _names(raw: dict[str, Any], key: str, bad: Callable[[str, str], PolicyFileError]) -> tuple[str, ...] | None:
    if key not in raw:
        return None
    value = raw[key]
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and _NAME.fullmatch(v.lower()) for v in value):
        raise bad(key, 'must be a list of names, e.g. ["westeurope", "eastus"]')
    return tuple(v.lower() for v in value)


class WatchedPolicy:
    """The file's entries as last read; `reload_if_changed` (every sweep) re-reads it when its mtime or
    size differ from the last read, in a thread. A bad edit is logged and the entries in force stay."""

    def __init__(self, path: Path | None, entries: tuple[PolicyEntry, ...], stamp: tuple[float, int] | None) -> None:
        self._path = path
        self.entries = entries
        self._stamp = stamp  # as start-up read it (bot/settings/governance.py)

    async def reload_if_changed(self) -> bool:
        path = self._path
        if path is None:
            return False
        try:
            stamp = await asyncio.to_thread(_stamp, path)
        except OSError as exc:
            log.error("VPN_POLICY_FILE %s cannot be read (%s); keeping the policy in force", path, type(exc).__name__)
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            self.entries = await asyncio.to_thread(load_policy, path)
        except PolicyFileError as exc:
            log.error("%s; keeping the policy in force", exc)
            return False
        log.info("VPN_POLICY_FILE %s reloaded: %d entries", path, len(self.entries))
        return True


def _stamp(path: Path) -> tuple[float, int]:
    st = os.stat(path)
    return st.st_mtime, st.st_size
