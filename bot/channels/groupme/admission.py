"""Per-key rate limits for GroupMe commands: a sliding window that says when to tell a sender once."""
from __future__ import annotations

import enum
import time
from collections import deque


class Admission(enum.Enum):
    ALLOWED = "allowed"
    REFUSED_FIRST = "refused, tell them"  # the first refusal since the key was last allowed
    REFUSED = "refused again"  # already told: stay quiet


class RateLimit:
    """At most `limit` events per `window` seconds per key (sliding window); says when to tell once."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._events: dict[str, deque] = {}
        self._told: set[str] = set()
        self._calls = 0

    def admit(self, key: str) -> Admission:
        now = time.monotonic()
        self._calls += 1
        if self._calls % 1024 == 0:
            self._forget_idle(now)
        q = self._events.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        if len(q) >= self.limit:
            if key in self._told:
                return Admission.REFUSED
            self._told.add(key)
            return Admission.REFUSED_FIRST
        self._told.discard(key)
        q.append(now)
        return Admission.ALLOWED

    def _forget_idle(self, now: float) -> None:
        """Keys whose last event left the window: forged senders must not grow memory for ever."""
        for key in [k for k, q in self._events.items() if not q or now - q[-1] > self.window]:
            del self._events[key]
            self._told.discard(key)
