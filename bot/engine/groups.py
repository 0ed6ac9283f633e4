"""Entra group membership, as the policy needs it: which of the groups the rules name a person is in.

Where a signed token listed the person's groups (the web's `groups` claim), that list answers.
Otherwise the person's Entra object id (`teams:<aadObjectId>`, which web sign-in with Entra shares)
is looked up in Microsoft Graph through a `GroupLookup` (bot/graph.py: the one module that talks to
Graph), all the named groups in one question, and the answer is cached for `cache_seconds`. Anyone
else (GroupMe, local accounts, the console) has no Entra object id and is in no group.

Fail closed: when Graph cannot answer, `of` raises `GroupsUnavailable` and the caller refuses
(a failure is never cached, so the next request asks again).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Callable, Protocol, Sequence

from bot.access import GUID, NO_GROUPS
from bot.messages import Identity

log = logging.getLogger(__name__)


class GroupsUnavailable(Exception):
    """Microsoft Graph could not say (unreachable, refusing, not configured): decide nothing on it."""


class GroupLookup(Protocol):
    async def member_groups(self, object_id: str, group_ids: Sequence[str]) -> frozenset[str]:
        """Which of `group_ids` the user `object_id` belongs to (transitively); raises GroupsUnavailable."""


class NoGraph:
    """No way to ask Graph is configured: every question that needs it fails closed."""

    async def member_groups(self, object_id: str, group_ids: Sequence[str]) -> frozenset[str]:
        raise GroupsUnavailable("Microsoft Graph is not configured (MicrosoftAppId)")


def object_id(who: Identity) -> str | None:
    """The person's Entra object id, where their identity carries one."""
    if who.key.channel == "teams" and GUID.fullmatch(who.key.id.lower()):
        return who.key.id.lower()
    return None


class Memberships:
    def __init__(self, lookup: GroupLookup, clock: Callable[[], datetime], cache_seconds: float) -> None:
        self._lookup = lookup
        self._clock = clock
        self._ttl = timedelta(seconds=cache_seconds)
        self.cache_seconds = cache_seconds  # how stale an answer may be: the revocation pass's period with groups
        self._cache: dict[tuple[str, frozenset[str]], tuple[datetime, frozenset[str]]] = {}

    async def of(self, who: Identity, wanted: frozenset[str]) -> frozenset[str]:
        """Which of the `wanted` groups `who` is in; raises GroupsUnavailable when that cannot be known."""
        if not wanted:
            return NO_GROUPS
        if who.groups is not None:
            return who.groups & wanted
        oid = object_id(who)
        if oid is None:
            return NO_GROUPS
        key = (oid, wanted)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        found = await self._lookup.member_groups(oid, sorted(wanted)) & wanted
        if len(self._cache) > 10_000:  # many people over a long time: start over rather than grow
            self._cache.clear()
        self._cache[key] = (now + self._ttl, found)
        return found
