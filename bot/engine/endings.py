"""What a session held besides its cloud resources, released when it ends (any ending: stop, expiry, failure)."""
from __future__ import annotations

from bot.engine.parts import EngineParts
from bot.store.model import Session


async def release_held(parts: EngineParts, s: Session) -> None:
    """Its tunnel addresses and its sealed configs: an unclaimed config is worthless now, so it is erased."""
    await parts.store.release_addresses(s.id)
    await parts.store.purge_claims(parts.clock(), session_id=s.id)
