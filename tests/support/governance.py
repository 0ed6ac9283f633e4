"""Helpers for the approval, group and policy tests: a provider that counts what it was asked, a channel
whose cards can be updated (as Teams' can), the settings that name the bot's own app for Graph."""
from __future__ import annotations

from dataclasses import dataclass, field

from provisioner.base import ServerInfo, ServerSpec
from tests.fakes.graph import FakeGraph, token
from tests.support.factories import RecordingChannel, Sent

GROUP_STAFF = "6f1c0000-0000-4000-8000-00000000aaaa"
GROUP_APPROVERS = "0b7e0000-0000-4000-8000-00000000bbbb"
GROUP_ADMINS = "adad0000-0000-4000-8000-00000000cccc"
ALICE_OID = "00000000-0000-0000-0000-00000000a11c"
BOB_OID = "00000000-0000-0000-0000-000000000b0b"
CAROL_OID = "00000000-0000-0000-0000-0000000ca201"
# group: rules need the bot's own app (for Microsoft Graph); the tests hand in the fake's token instead.
APP = {"MicrosoftAppId": "11111111-0000-0000-0000-000000000001", "MicrosoftAppPassword": "not-used-a-token-is-handed-in",
       "MicrosoftAppTenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47"}


def graph_env(graph: FakeGraph, **env: str) -> dict:
    """make_runtime keywords for a runtime that asks this fake Graph."""
    return {**APP, "VPN_GRAPH_ENDPOINT": graph.base_url, "runtime_kw": {"graph_token": token, "graph_ssl": graph.trust()}, **env}


class SpyProvider:
    """The real provider, with every create and destroy counted (a denied request must cause none)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.polls_traffic = inner.polls_traffic
        self.created: list[str] = []
        self.destroyed: list[str] = []

    @property
    def regions(self):
        return self.inner.regions

    def hourly_cost(self, region: str) -> float:
        return self.inner.hourly_cost(region)

    async def create(self, spec: ServerSpec, progress) -> ServerInfo:
        self.created.append(spec.session_id)
        return await self.inner.create(spec, progress)

    async def wait_ready(self, spec, progress) -> None:
        await self.inner.wait_ready(spec, progress)

    async def destroy(self, session_id: str, *, resource_id=None, peer_public_key=None) -> None:
        self.destroyed.append(session_id)
        await self.inner.destroy(session_id, resource_id=resource_id, peer_public_key=peer_public_key)

    async def list_managed(self):
        return await self.inner.list_managed()

    async def traffic(self, peers):
        return await self.inner.traffic(peers)

    def default_deployment_id(self) -> str:
        return self.inner.default_deployment_id()

    def bind_deployment(self, deployment_id: str, *, store_id: str = "") -> None:
        self.inner.bind_deployment(deployment_id)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class CardChannel(RecordingChannel):
    """A recording channel whose cards have handles and can be replaced, as Teams' can."""

    updates: list[tuple[str, str]] = field(default_factory=list)  # (handle, new card text)

    async def send_card(self, conv, card):
        await super().send_card(conv, card)
        return f"card-{len(self.sent)}"

    async def update_card(self, conv, handle, card):
        from cards.text import render_card_text

        self.updates.append((handle, render_card_text(card)))
        self.sent.append(Sent("update", conv, render_card_text(card)))
        return True

    def to(self, user: str, kind: str | None = None) -> list[str]:
        """What went to one person's own conversation (tests/support/factories.incoming puts `user` in it)."""
        return [s.text for s in self.sent if s.conv.data.get("user") == user and (kind is None or s.kind == kind)]
