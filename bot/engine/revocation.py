"""Revocation: a live session whose owner would no longer be let in ends, and its owner is told why.

A pass checks each live session's owner as a new request would be — VPN_USERS/VPN_ADMINS, the policy
file, Entra groups (cached for VPN_GROUP_CACHE_SECONDS). It reads every live session, so it is a
fleet-wide turn (`take_turn`: one replica, or `reap`, per turn), not part of every sweep (issue 25):
at once when the rules changed (a digest of them differs from the last pass's: a deploy that edits
VPN_USERS, a reloaded policy file), every fifth of VPN_GROUP_CACHE_SECONDS (a minute at least) while a
rule names a group, and daily otherwise. So someone removed from a group loses their session within
the cache time plus a minute or so; someone removed from VPN_USERS or the policy, at the restart or reload that removes them. When
Graph cannot answer, nothing is revoked on a guess (the session still ends at its time); every
revocation is in the audit log.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Awaitable, NamedTuple

from bot.engine import notices
from bot.engine.parts import EngineParts
from bot.engine.policy import Policy
from bot.engine.usage import REVOKED
from bot.store.model import SessionState

if TYPE_CHECKING:  # handed in by the service; importing teardown here would load bot.metrics (aiohttp)
    from bot.engine.approvals import Approvals
    from bot.engine.teardown import Teardown

log = logging.getLogger(__name__)
UNCHANGED_RULES_EVERY = timedelta(days=1)  # rules without groups change only with a deploy or a reload (a new digest)
CHECKED = (SessionState.AWAITING_APPROVAL, SessionState.REQUESTED, SessionState.PROVISIONING, SessionState.READY)


class Checked(NamedTuple):
    """A live session as a revocation pass keeps it."""

    id: str
    state: SessionState
    owner: str
    owner_label: str


class Revocation:
    def __init__(self, parts: EngineParts, policy: Policy, teardown: Teardown, approvals: Approvals) -> None:
        self.p = parts
        self.policy = policy
        self.teardown = teardown
        self.approvals = approvals

    async def my_turn(self, now: datetime) -> bool:
        """Whether this worker runs a pass now (see the module's docstring)."""
        await self.policy.reload_if_changed()
        groups = bool(self.policy.wanted_groups)
        every = timedelta(seconds=max(60.0, self.policy.memberships.cache_seconds / 5)) if groups else UNCHANGED_RULES_EVERY
        return await self.p.store.take_turn("revocation", self.p.worker.id, now, every, mark=self.policy.fingerprint())

    async def sweep(self) -> list[Awaitable[object]]:
        """The revocations due now, for the sweeper to run with the rest of its work."""
        by_owner: dict[tuple[str, str], list[Checked]] = {}  # what a revocation needs, not whole sessions (10,000 live: 70 MB)
        async for s in self.p.store.each_session(CHECKED):
            by_owner.setdefault((s.owner, s.owner_label), []).append(Checked(s.id, s.state, s.owner, s.owner_label))
        due: list[Awaitable[object]] = []
        unknown = False
        for (owner, label), sessions in by_owner.items():
            allowed = await self.policy.still_allowed(owner, label)
            if allowed is None:
                unknown = True
                log.warning("cannot check whether %s is still allowed (group membership unavailable); checking again next sweep", owner)
            elif not allowed:
                due += [self._revoke(s) for s in sessions]
        if unknown:  # give the turn back: an empty mark never equals a digest, so the next pass takes it
            p = self.p
            await p.store.take_turn("revocation", p.worker.id, p.clock(), timedelta(0), mark="")
        return due

    async def _revoke(self, s: Checked) -> None:
        if s.state is SessionState.AWAITING_APPROVAL:
            ended = await self.approvals.cancel(s.id, notices.ACCESS_WITHDRAWN, kind=REVOKED)
        else:
            ended = await self.teardown.begin(s.id, notices.ACCESS_WITHDRAWN, REVOKED)
        if ended:
            log.warning("session %s of %s revoked: no longer allowed", s.id, s.owner)
            email = s.owner_label if s.owner_label != s.owner else ""
            await self.policy.record_for(s.owner, email, "engine", f"revoke {s.id}", False, "no longer on the allowlist, the policy or an allowed group")
