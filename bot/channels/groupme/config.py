"""The GroupMe channel's settings (read by bot/settings/)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupMeConfig:
    bot_id: str  # for groups without a pair in `bots`
    group_ids: tuple[str, ...]
    callback_secret: str
    bots: tuple[tuple[str, str], ...] = ()  # (group id, bot id): each group replies through its own bot
    access_token: str = ""
    oauth_client_id: str = ""
    api_url: str = "https://api.groupme.com/v3"
    oauth_url: str = "https://oauth.groupme.com/oauth/authorize"
    public_url: str = ""
    claim_minutes: int = 10
    per_user_per_minute: int = 6
    per_group_per_minute: int = 60
    post_spacing: float = 0.4
    verify_window: float = 600.0  # how far back (seconds) GroupMe's message list is searched
    verify_retry_delay: float = 1.0  # one more look for a message GroupMe does not list yet
    request_timeout: float = 15.0  # seconds per GroupMe API call (then retried)

    def bot_for(self, group_id: str) -> str:
        return dict(self.bots).get(group_id) or self.bot_id

    def __repr__(self) -> str:
        return f"GroupMeConfig(groups={self.group_ids}, dm={'on' if self.access_token else 'off'}, oauth={'on' if self.oauth_client_id else 'off'})"
