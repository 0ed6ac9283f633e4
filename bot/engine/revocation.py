"""Revocation: a live session whose owner would no longer be let in ends, and its owner is told why.

Part of every sweep (any replica, and `reap`): the policy file is re-read if it changed, then each
live session's owner is checked as a new request would be — VPN_USERS/VPN_ADMINS, the policy file,
Entra groups (cached for VPN_GROUP_CACHE_SECONDS). So someone removed from a group loses their session
within the cache time plus one sweep; someone removed from VPN_USERS or the policy, at the restart or
reload that removes them. When Graph cannot answer, nothing is revoked on a guess (the session still
ends at its time); every revocation is in the audit log.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Awaitable

from bot.engine import notices
from bot.engine.parts import EngineParts
from bot.engine.policy import Policy
from bot.engine.usage import REVOKED
from bot.store.model import Session, SessionState

if TYPE_CHECKING:  # handed in by the service; importing teardown here would load bot.metrics (aiohttp)
    from bot.engine.approvals import Approvals
    from bot.engine.teardown import Teardown

log = logging.getLogger(__name__)
CHECKED = (SessionState.AWAITING_APPROVAL, SessionState.REQUESTED, SessionState.PROVISIONING, SessionState.READY)


class Revocation:
    def __init__(self, parts: EngineParts, policy: Policy, teardown: Teardown, approvals: Approvals) -> None:
        self.p = parts
        self.policy = policy
        self.teardown = teardown
        self.approvals = approvals

    async def sweep(self) -> list[Awaitable[object]]:
        """The revocations due now, for the sweeper to run with the rest of its work."""
        await self.policy.reload_if_changed()
        by_owner: dict[tuple[str, str], list[Session]] = {}
        for s in await self.p.store.sessions(CHECKED):
            by_owner.setdefault((s.owner, s.owner_label), []).append(s)
        due: list[Awaitable[object]] = []
        for (owner, label), sessions in by_owner.items():
            allowed = await self.policy.still_allowed(owner, label)
            if allowed is None:
                log.warning("cannot check whether %s is still allowed (group membership unavailable); checking again next sweep", owner)
            elif not allowed:
                due += [self._revoke(s) for s in sessions]
        return due

    async def _revoke(self, s: Session) -> None:
        if s.state is SessionState.AWAITING_APPROVAL:
            ended = await self.approvals.cancel(s.id, notices.ACCESS_WITHDRAWN, kind=REVOKED)
        else:
            ended = await self.teardown.begin(s.id, notices.ACCESS_WITHDRAWN, REVOKED)
        if ended:
            log.warning("session %s of %s revoked: no longer allowed", s.id, s.owner)
            email = s.owner_label if s.owner_label != s.owner else ""
            await self.policy.record_for(s.owner, email, "engine", f"revoke {s.id}", False, "no longer on the allowlist, the policy or an allowed group")
