"""One holder per value across every replica: tunnel addresses, and the public keys users bring.

A reservation is an insert-if-absent in the store (`AddressStore`); one whose session has ended (or,
after a moment's grace, never got written) is stale, and released so the value can be taken again.
Released with the rest of what a session held when it ends (bot/engine/endings.py)."""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Callable, Protocol

from bot.store.model import TERMINAL_STATES, Session
from bot.store.ports import AddressStore

KEY_SCOPE = "brought-key"  # the scope of users' own public keys (provider scopes are provider names)
TRIES = 3
UNWRITTEN_GRACE = 1.0  # seconds: a holder not in the store yet may be a start between its reservation and its write


class _Store(AddressStore, Protocol):
    async def get(self, session_id: str) -> Session | None: ...


async def reserve(store: _Store, scope: str, value: str, session_id: str, clock: Callable[[], datetime], *, grace: float = 0.0) -> bool:
    """True if `session_id` holds `value` in `scope` now; False while a live session holds it."""
    for _ in range(TRIES):
        holder = await store.reserve_address(scope, value, session_id, clock())
        if holder == session_id:
            return True
        other = await store.get(holder) if holder else None
        if other is None and holder and grace:
            await asyncio.sleep(grace)
            other = await store.get(holder)
            if other is None and await store.reserve_address(scope, value, session_id, clock()) != holder:
                continue  # it changed hands meanwhile: look again
        if other is not None and other.state not in TERMINAL_STATES:
            return False
        await store.release_address(scope, value, holder)  # its session ended (or never was): stale
    return False
