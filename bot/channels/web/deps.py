"""What the wiring hands the web channel: the engine's use cases and policy, and the stores it reads."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Sequence

from bot.engine.config import SessionPolicy
from bot.engine.policy import Policy
from bot.store.ports import AccountStore, OneTimeConfigStore, ProgressStore, SessionReader

if TYPE_CHECKING:
    import aiohttp

    from bot.engine.service import VpnService


@dataclass(frozen=True)
class WebDeps:
    http: "aiohttp.ClientSession"  # Entra's signing keys
    clock: Callable[[], datetime]
    engine: "VpnService"  # start, stop, extend, the sessions an actor may see
    policy: Policy  # the same door the chat dispatcher asks: allowlist, rules, audit
    limits: SessionPolicy
    regions: Sequence[str]
    accounts: AccountStore  # local sign-in
    progress: ProgressStore  # each request's progress line and notes, readable by any replica
    configs: OneTimeConfigStore  # the held configs
    sessions: SessionReader  # the session a delivery belongs to
