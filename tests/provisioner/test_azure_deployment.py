"""Issue 18.2: the default deployment id survives losing the store, and reconcile reports (never
deletes) another deployment's resources. The real Azure SDK clients against the fake ARM."""
from __future__ import annotations

import logging
import shutil

from bot.settings import Settings
from bot.store.model import SessionState
from bot.wiring import Runtime
from provisioner.azure import default_deployment_id, deployment_mark
from tests.provisioner.test_azure import arm, azure, settle  # noqa: F401 (arm: the fixture)
from tests.support.factories import RecordingChannel, incoming

OTHER = {"managed-by": "vpn-bot", "vpn-deployment": "vpn-prod-1", "vpn-session": "0a0a0a0a0a", "expires-at": "2026-01-01T00:00:00+00:00"}


def _runtime(tmp_path, arm, clock, **provider_overrides) -> Runtime:
    """What `serve`, `console` and `reap` build, on a data folder that a test may delete."""
    settings = Settings.from_env({"VPN_DATA_DIR": str(tmp_path / "data"), "VPN_USERS": "test:alice"})
    settings.ops.data_dir.mkdir(parents=True, exist_ok=True)
    provider = azure(arm, **provider_overrides)
    provider.clock = clock  # the engine's clock wrote the expires-at tags
    return Runtime(settings, provider, [RecordingChannel()], clock=clock, background=False)


def _another_deployments(arm) -> set[str]:
    """A session of another deployment in the same group (same instance name, its own id) and an OS
    disk with another deployment's mark: never ours to delete."""
    arm.add("publicIPAddresses", "vpn-0a0a0a0a0a-ip", tags=OTHER)
    arm.add("networkInterfaces", "vpn-0a0a0a0a0a-nic", tags=OTHER)
    arm.add("disks", f"vpn-0a0a0a0a0a-osdisk-{deployment_mark('vpn-prod-1')}", ns="Microsoft.Compute")
    return {"vpn-0a0a0a0a0a-ip", "vpn-0a0a0a0a0a-nic", f"vpn-0a0a0a0a0a-osdisk-{deployment_mark('vpn-prod-1')}"}


async def test_a_lost_store_leaves_nothing_behind_once_its_sessions_expire(arm, clock, tmp_path, caplog):
    theirs = _another_deployments(arm)
    async with _runtime(tmp_path, arm, clock) as rt:
        await rt.dispatcher.handle(incoming("/vpn start"))
        await settle(rt)
        (s,) = await rt.store.sessions([SessionState.READY])
    ours = {r["name"] for r in arm.resources.values()} - theirs
    assert len(arm.session_resources(s.id)) == 3 and any(n.startswith(f"vpn-{s.id}-osdisk-") for n in ours)

    shutil.rmtree(tmp_path / "data")  # the store is gone; the VM, NIC, IP and disk are not
    caplog.set_level(logging.WARNING, logger="provisioner.azure")
    clock.advance(minutes=10)  # the session would still run: a reap now leaves it (and reports it)
    async with _runtime(tmp_path, arm, clock) as rt:
        assert (await rt.service.reap_once()).removed == 0
    assert len(arm.session_resources(s.id)) == 3
    assert "made with another store" in caplog.text and f"vpn-{s.id}-vm" in caplog.text

    clock.advance(minutes=25)  # past its expiry
    caplog.clear()
    async with _runtime(tmp_path, arm, clock) as rt:
        assert (await rt.service.reap_once()).removed == 1
    assert arm.session_resources(s.id) == []
    assert set(arm.billed()) == theirs  # ours all gone, including the untagged disk; theirs untouched
    reported = [r.getMessage() for r in caplog.records if "another deployment" in r.getMessage()]
    assert any("vpn-bot/vpn-prod-1" in m and "vpn-0a0a0a0a0a-ip" in m for m in reported), reported
    assert any(deployment_mark("vpn-prod-1") in m for m in reported), reported
    assert not any(r.exc_info for r in caplog.records)


async def test_upgrading_keeps_the_sessions_made_under_the_stores_random_id(arm, clock, tmp_path):
    """Before issue 18 the default id was the store's random one; a live session made then must be
    neither orphaned nor deleted after the upgrade, and its leftovers still count as ours."""
    async with _runtime(tmp_path, arm, clock) as rt:
        stored = await rt.store.deployment_id()
    # The old version: everything tagged (and disks marked) with the store's id, no store tag.
    async with _runtime(tmp_path, arm, clock, deployment_id=stored) as old:
        old.provider._store_id = ""
        await old.dispatcher.handle(incoming("/vpn start"))
        await settle(old)
        (s,) = await old.store.sessions([SessionState.READY])
    assert {r["tags"]["vpn-deployment"] for r in arm.session_resources(s.id)} == {stored}
    arm.add("publicIPAddresses", "vpn-1b1b1b1b1b-ip", tags={**OTHER, "vpn-deployment": stored, "vpn-session": "1b1b1b1b1b"})
    arm.add("disks", f"vpn-2c2c2c2c2c-osdisk-{deployment_mark(stored)}", ns="Microsoft.Compute")

    async with _runtime(tmp_path, arm, clock) as new:
        assert new.provider.deployment_id == new.provider.default_deployment_id() != stored
        assert await new.service.reconcile() == 2  # the old version's leftovers: still ours
        assert len(arm.session_resources(s.id)) == 3  # the live one: still there
        await new.dispatcher.handle(incoming("/vpn stop"))
        await settle(new)
        assert await new.service.reconcile() == 0
    assert arm.billed() == []


def test_the_default_id_depends_on_subscription_group_and_instance_only():
    sub, other_sub = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
    made = default_deployment_id(sub, "vpn-rg", "vpn-bot")
    assert made == default_deployment_id(sub.upper(), "VPN-RG", "vpn-bot")  # ARM names are case-insensitive
    assert made.startswith("vpn-bot-") and len(made) <= 64
    assert len({made, default_deployment_id(other_sub, "vpn-rg", "vpn-bot"), default_deployment_id(sub, "vpn-rg2", "vpn-bot"),
                default_deployment_id(sub, "vpn-rg", "vpn-bot2")}) == 4
    settings = Settings.from_env({"VPN_DEPLOYMENT_ID": made})  # a valid VPN_DEPLOYMENT_ID too, to pin it
    assert settings.ops.deployment_id == made
