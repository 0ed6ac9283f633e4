"""A channel for benchmarks: accepts everything, records when each person's config was delivered.

No project imports, so a benchmark that measures memory by stage can import it first.
"""
from __future__ import annotations

import time


class TimingChannel:
    name = "bench"

    def __init__(self) -> None:
        self.delivered: dict[str, float] = {}

    # The channel protocol's optional abilities (bot/replies.py ChannelDefaults), without importing it.
    async def attach(self, deps): ...
    def routes(self, app): ...
    async def check_private_delivery(self, conv, recipient): ...
    async def retract_config(self, conv, session_id, handle): ...
    async def send_text(self, conv, text): ...
    async def send_card(self, conv, card): ...
    async def send_progress(self, conv, text, handle):
        return handle or "p"

    def can_deliver_privately(self, conv):
        return True

    async def deliver_config(self, conv, recipient, delivery):
        self.delivered[str(recipient.key)] = time.perf_counter()
        return "delivered"
