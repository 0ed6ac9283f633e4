"""Channel-neutral values: who spoke, where, and what they said.

Channels turn platform payloads into these; everything behind them never sees a platform type.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

MAX_ID_LENGTH = 256


class InvalidIdentity(ValueError):
    """An id a channel must not accept (empty, too long, control characters)."""


@dataclass(frozen=True, order=True)
class UserKey:
    """A stable identity: `teams:<aadObjectId>`, `groupme:<user_id>`, `console:<name>`. Never a display name."""

    channel: str
    id: str

    def __post_init__(self) -> None:
        for part in (self.channel, self.id):
            # No character of Unicode's Other (C*) or Separator (Z*) categories: str.isprintable() refuses
            # exactly those but the ASCII space (checked against unicodedata for every code point).
            if not part or len(part) > MAX_ID_LENGTH or not part.isprintable() or " " in part:
                raise InvalidIdentity(f"unusable identity part {part[:40]!r}")
        if ":" in self.channel:
            raise InvalidIdentity("a channel name has no ':'")

    def __str__(self) -> str:
        return f"{self.channel}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> "UserKey":
        channel, sep, ident = text.strip().partition(":")
        if not sep:
            raise InvalidIdentity(f"{text[:40]!r} is not channel:id")
        return cls(channel.strip().lower(), ident.strip())


@dataclass(frozen=True)
class Identity:
    """The sender as a channel vouches for them; `email` only when the platform verified it. `groups`:
    the Entra group object ids a signed token listed (the web's `groups` claim), None when it listed
    none or too many (then the policy asks Microsoft Graph)."""

    key: UserKey
    email: str | None = None
    display_name: str = ""
    groups: frozenset[str] | None = None

    @property
    def label(self) -> str:
        """How to show this person to admins: the verified email, else the stable key."""
        return self.email or str(self.key)


@dataclass(frozen=True)
class ConversationRef:
    """An opaque way back to a conversation, stored with the session so replies survive restarts."""

    channel: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"channel": self.channel, "data": dict(self.data)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ConversationRef":
        raw = json.loads(text)
        return cls(raw["channel"], raw.get("data") or {})


@dataclass(frozen=True)
class Incoming:
    """One message addressed to the bot, mentions already stripped by the channel."""

    identity: Identity
    text: str
    conversation: ConversationRef
    message_id: str | None = None
    is_private: bool = True


@dataclass(frozen=True)
class Notice:
    """Something the engine says on its own, in two registers: `chat` names the command to type
    next, `page` does not (the web page has buttons). The sentences live in bot/engine/notices.py."""

    chat: str
    page: str = ""

    def text_for(self, speaks_commands: bool) -> str:
        return self.chat if speaks_commands or not self.page else self.page
