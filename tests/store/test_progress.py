"""The progress port on both back ends: short per-request texts any replica reads."""
from __future__ import annotations

from datetime import timedelta

from tests.support.factories import T0


async def test_progress_text(store):
    assert await store.get_progress("web:r1") == ""
    await store.set_progress("web:r1", "step 1", T0)
    await store.set_progress("web:r1", "step 2", T0)
    await store.set_progress("web:r2", "x" * 5000, T0)  # stored whole: the web channel keeps notes under 15k
    assert await store.get_progress("web:r1") == "step 2"
    assert await store.get_progress("web:r2") == "x" * 5000
    await store.set_progress("web:r3", "later", T0 + timedelta(days=3))  # old texts are forgotten
    assert await store.get_progress("web:r1") == ""
