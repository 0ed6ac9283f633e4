"""Configs held for their owner on the web: two one-time claims per provisioning attempt (the `.conf`
and its QR), sealed under tokens derived from the server secret, the session id and the attempt, so
any replica can open them and the store alone cannot. Taking the file erases the QR too; the
session's end erases both. A restarted attempt (the bot died mid-provisioning) holds its fresh
config under new tokens after erasing the dead attempt's: the owner can take the new one once, even
if they took the old one."""
from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

from bot import one_time_configs
from bot.channels.web.signin_local import derive_key
from bot.store.ports import OneTimeConfigStore

CONF, PNG = "conf", "png"


class HeldConfigs:
    def __init__(self, secret: str) -> None:
        self._key = derive_key(secret, "held configs")

    def token(self, purpose: str, session_id: str, attempt: int) -> str:
        mac = hmac.new(self._key, f"{purpose}:{session_id}:{attempt}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    async def hold(
        self, store: OneTimeConfigStore, *, session_id: str, attempt: int, user: str, tunnel_name: str, config: str, qr_png: bytes,
        now: datetime, lifetime: timedelta,
    ) -> None:
        await store.purge_claims(now, session_id=session_id)  # a dead attempt's config (its keys are gone)
        for purpose, text in ((PNG, base64.b64encode(qr_png).decode()), (CONF, config)):
            await one_time_configs.hold(store, session_id=session_id, user=user, tunnel_name=tunnel_name, config=text, now=now, lifetime=lifetime,
                                        token=self.token(purpose, session_id, attempt))

    async def take(
        self, store: OneTimeConfigStore, purpose: str, session_id: str, attempt: int, now: datetime
    ) -> tuple[one_time_configs.Claim, str] | None:
        taken = await one_time_configs.take(store, self.token(purpose, session_id, attempt), now)
        if taken is not None and purpose == CONF:
            # The QR holds the same secret: once the file is out, the QR is erased too.
            await store.consume_claim(one_time_configs.token_hash(self.token(PNG, session_id, attempt)), now)
        return taken

    async def held(self, store: OneTimeConfigStore, purpose: str, session_id: str, attempt: int) -> one_time_configs.Claim | None:
        return await store.get_claim(one_time_configs.token_hash(self.token(purpose, session_id, attempt)))
