"""Replicas share a wave of due sessions: each walks the circle of session ids from its own starting point,
so two of them work on different arcs until they meet instead of racing for the same sessions."""
from __future__ import annotations

from bot.engine.sweeper import Sweeper


def test_two_workers_walk_the_same_circle_from_different_points():
    a, b = Sweeper.__new__(Sweeper), Sweeper.__new__(Sweeper)
    a._start, b._start = 0, 1 << 31
    ids = [f"{i:010x}" for i in range(200)]
    mine, theirs = sorted(ids, key=a._arc), sorted(ids, key=b._arc)
    k = mine.index(theirs[0])
    assert 0 < k < len(ids) and theirs == mine[k:] + mine[:k]  # one circle, entered at two points
    assert not set(mine[: k // 2]) & set(theirs[: (len(ids) - k) // 2])  # their first stretches are disjoint
