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


async def test_a_text_goes_two_days_after_its_last_write(store, replica):
    """Table Storage purges through an index by the hour written (issue 25): a text written again within
    the hour of its index row is kept, then goes in its turn."""
    await store.set_progress("web:r1", "step 1", T0)
    await store.set_progress("web:r1", "step 2", T0 + timedelta(minutes=30))
    await store.set_progress("web:other", "x", T0 + timedelta(days=2, minutes=10))  # purges what is older than two days
    assert await replica.get_progress("web:r1") == "step 2"
    await store.set_progress("web:other", "y", T0 + timedelta(days=2, minutes=31))
    assert await replica.get_progress("web:r1") == ""
    await replica.set_progress("web:r2", "z", T0 + timedelta(days=2, minutes=32))  # another process's texts and purge
    await replica.set_progress("web:other", "w", T0 + timedelta(days=4, minutes=33))
    assert await store.get_progress("web:r2") == "" and await store.get_progress("web:other") == "w"
