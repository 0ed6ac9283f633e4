"""The GroupMe channel's section: `GroupMeConfig` when GROUPME_BOT_ID is set, else None."""
from __future__ import annotations

import re

from bot.channels.groupme.config import GroupMeConfig
from bot.settings.reader import Reader, SettingsError, digit_list, groupme_bots, union
from bot.settings.reader import public_url as url


def read(r: Reader, *, public_url: str) -> GroupMeConfig | None:
    try:  # not r.parse: its message would repeat the value, and bot ids are credentials
        bot_id, bots = groupme_bots(r.text("GROUPME_BOT_ID", ""))
    except ValueError:
        raise SettingsError(
            "GROUPME_BOT_ID is not valid: expected a bot id, or comma-separated <group id>:<bot id> pairs "
            "(at most one plain bot id among them, one bot per group)"
        ) from None
    group_ids = union(r.parse("GROUPME_GROUP_ID", "", digit_list, "comma-separated numeric GroupMe group ids"), bots)
    config = GroupMeConfig(
        bot_id=bot_id,
        bots=bots,
        group_ids=group_ids,
        callback_secret=r.text("GROUPME_CALLBACK_SECRET", ""),
        access_token=r.text("GROUPME_ACCESS_TOKEN", ""),
        oauth_client_id=r.text("GROUPME_OAUTH_CLIENT_ID", ""),
        api_url=r.parse("GROUPME_API_URL", "https://api.groupme.com/v3", url, "an https:// URL"),
        oauth_url=r.parse("GROUPME_OAUTH_URL", "https://oauth.groupme.com/oauth/authorize", url, "an https:// URL"),
        public_url=public_url,
        claim_minutes=r.integer("GROUPME_CLAIM_MINUTES", 10, 1, 60),
        per_user_per_minute=r.integer("GROUPME_USER_PER_MINUTE", 6, 1, 1000),
        per_group_per_minute=r.integer("GROUPME_GROUP_PER_MINUTE", 60, 1, 10_000),
    )
    if not (bot_id or bots):
        return None
    if len(config.callback_secret) < 16 or not re.fullmatch(r"[A-Za-z0-9_-]+", config.callback_secret):
        raise SettingsError(
            "GROUPME_CALLBACK_SECRET must be at least 16 URL-safe characters (letters, digits, '-', '_'): "
            "it is the only thing keeping forged callbacks out"
        )
    if not group_ids:
        raise SettingsError("GROUPME_GROUP_ID is required with GROUPME_BOT_ID: the group(s) the bot answers")
    paired = {g for g, _ in bots}
    orphans = [g for g in group_ids if g not in paired]
    if orphans and not bot_id:
        raise SettingsError(
            f"GROUPME_GROUP_ID lists group {orphans[0]} but GROUPME_BOT_ID names no bot for it: "
            "add a pair <group>:<bot> or one plain bot id"
        )
    return config
