"""How long to wait before retrying a throttled or failed platform call (GroupMe, Teams)."""
from __future__ import annotations

import random


def retry_delay(attempt: int, base: float, retry_after: str | None = None) -> float:
    """Seconds before retry `attempt` (0-based): the server's Retry-After (seconds) when it sent one,
    else `base`·2^attempt; then equal jitter (half fixed, half random) so throttled senders spread out."""
    delay = base * 2**attempt
    if retry_after:
        try:
            delay = max(0.0, float(retry_after))
        except ValueError:
            pass  # an HTTP date: fall back to exponential
    return random.uniform(delay / 2, delay)
