"""Is a GroupMe callback a message GroupMe really holds, from that sender, with that text?

Callbacks are not signed, so every command is re-fetched with the service account's token (only
documented paging, see api.py) and must match sender and text before anything about anyone is
answered. A mismatch is a forgery (dropped quietly); a message GroupMe cannot confirm is told.
"""
from __future__ import annotations

import asyncio
import enum
import logging

from bot.channels.groupme.api import GroupMeApi, GroupMeError
from bot.channels.groupme.chatter import strip_mentions

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    CONFIRMED = "confirmed"
    FORGED = "forged"  # GroupMe holds that message with another sender or text: drop quietly
    UNCONFIRMED = "unconfirmed"  # GroupMe could not confirm it: tell the sender


async def verify(api: GroupMeApi, group_id: str, message_id: str, user_id: str, text: str, *,
                 not_before: float, retry_delay: float) -> Verdict:
    """Is this callback a message GroupMe really holds, from that sender, with that text?"""
    try:
        stored = await api.find_message(group_id, message_id, not_before=not_before)
        if stored is None and retry_delay >= 0:
            await asyncio.sleep(retry_delay)  # a message GroupMe does not list yet
            stored = await api.find_message(group_id, message_id, not_before=not_before)
    except GroupMeError as exc:
        log.warning("GroupMe: could not verify message %s (%s)", message_id, exc)
        return Verdict.UNCONFIRMED
    if stored is None:
        log.warning("GroupMe: message %s is not among the group's recent messages", message_id)
        return Verdict.UNCONFIRMED
    stored_user = str(stored.get("user_id") or stored.get("sender_id") or "")
    stored_text = stored.get("text") if isinstance(stored.get("text"), str) else ""
    if stored_user != user_id or strip_mentions(stored_text, stored.get("attachments")) != text or stored.get("sender_type", "user") != "user":
        log.warning("GroupMe: callback for message %s does not match what GroupMe stored: forged? dropped", message_id)
        return Verdict.FORGED
    return Verdict.CONFIRMED
