"""Who may use the bot, and who administers it.

Rules (VPN_USERS / VPN_ADMINS, comma-separated) name stable ids — `teams:<aadObjectId>`,
`groupme:<user_id>`, `console:<name>` — or match an email a channel verified: `email:<address>`,
`domain:<example.org>`, or name an Entra group, `group:<object id>` (membership is looked up by the
policy, bot/engine/groups.py, and handed in as `groups`). An empty allowlist refuses everyone but the
local console operator.
"""
from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

from bot.messages import Identity, InvalidIdentity, UserKey


class Role(str, enum.Enum):
    USER = "user"
    ADMIN = "admin"


class RuleError(ValueError):
    pass


def _clean(text: str) -> str:
    """NFKC + casefold, so look-alike full-width letters and case tricks compare as what they render to."""
    return unicodedata.normalize("NFKC", text).casefold().strip()


GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NO_GROUPS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule:
    kind: str  # "id", "email", "domain" or "group"
    value: str

    def matches(self, who: Identity, groups: frozenset[str] = NO_GROUPS) -> bool:
        """`groups`: the Entra groups (object ids) `who` is known to belong to, among those the rules name."""
        if self.kind == "id":
            return _id_text(who.key) == self.value
        if self.kind == "group":
            return self.value in groups
        if who.email is None:
            return False
        email = _clean(who.email)
        if self.kind == "email":
            return email == self.value
        local, at, domain = email.rpartition("@")
        return bool(at and local) and domain == self.value


def _id_text(key: UserKey) -> str:
    # Ids are compared case-insensitively: Teams AAD object ids are GUIDs that appear in either case.
    return f"{key.channel}:{key.id.lower()}"


def parse_rules(text: str) -> tuple[Rule, ...]:
    rules = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, sep, value = item.partition(":")
        kind, value = kind.strip().lower(), value.strip()
        if not sep or not value:
            raise RuleError(f"{item!r} is not kind:value (teams:…, groupme:…, console:…, email:…, domain:…, group:…)")
        if kind == "email":
            value = _clean(value)
            if value.count("@") != 1 or value.startswith("@") or value.endswith("@"):
                raise RuleError(f"{item!r} is not an email address")
            rules.append(Rule("email", value))
        elif kind == "domain":
            value = _clean(value).lstrip("@")
            if "@" in value or "." not in value:
                raise RuleError(f"{item!r} is not a domain like example.org")
            rules.append(Rule("domain", value))
        elif kind == "group":
            value = value.lower()
            if not GUID.fullmatch(value):
                raise RuleError(f"{item!r} is not group:<Entra group object id> (a GUID)")
            rules.append(Rule("group", value))
        else:
            try:
                key = UserKey(kind, value)
            except InvalidIdentity as exc:
                raise RuleError(f"{item!r}: {exc}") from None
            rules.append(Rule("id", _id_text(key)))
    return tuple(rules)


def group_ids(rules: Iterable[Rule]) -> frozenset[str]:
    """The Entra groups some rule names."""
    return frozenset(r.value for r in rules if r.kind == "group")


def matches_any(rules: Iterable[Rule], who: Identity, groups: frozenset[str] = NO_GROUPS) -> bool:
    return any(rule.matches(who, groups) for rule in rules)


class AccessPolicy:
    """Decides a role for an identity; None means refused."""

    def __init__(self, users: Iterable[Rule], admins: Iterable[Rule], local_operator: UserKey | None = None) -> None:
        self._users = tuple(users)
        self._admins = tuple(admins)
        self._operator = local_operator
        # Id rules as sets (a lookup per message, however long VPN_USERS is); the other kinds in order.
        self._user_ids, self._user_others = _by_id(self._users)
        self._admin_ids, self._admin_others = _by_id(self._admins)
        self._group_ids = group_ids((*self._users, *self._admins))

    def describe(self) -> str:
        """The rules as text (no secrets in them): a change shows in a digest of it."""
        return repr((self._users, self._admins))

    @classmethod
    def from_text(cls, users: str, admins: str, local_operator: UserKey | None = None) -> "AccessPolicy":
        return cls(parse_rules(users), parse_rules(admins), local_operator)

    def with_operator(self, operator: UserKey) -> "AccessPolicy":
        return AccessPolicy(self._users, self._admins, operator)

    @property
    def group_ids(self) -> frozenset[str]:
        return self._group_ids

    def is_operator(self, who: Identity) -> bool:
        return self._operator is not None and who.key == self._operator

    def role_of(self, who: Identity, groups: frozenset[str] = NO_GROUPS) -> Role | None:
        if self.is_operator(who):
            return Role.ADMIN
        key = _id_text(who.key)
        if key in self._admin_ids or matches_any(self._admin_others, who, groups):
            return Role.ADMIN
        if key in self._user_ids or matches_any(self._user_others, who, groups):
            return Role.USER
        return None


def _by_id(rules: tuple[Rule, ...]) -> tuple[frozenset[str], tuple[Rule, ...]]:
    """The values of the id rules, and the other rules: `matches_any(rules, who)` is `_id_text(who.key) in ids or matches_any(others, who)`."""
    return frozenset(r.value for r in rules if r.kind == "id"), tuple(r for r in rules if r.kind != "id")
