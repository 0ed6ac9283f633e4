"""Who may use the bot and who administers it (VPN_USERS, VPN_ADMINS), as the policy the dispatcher asks."""
from __future__ import annotations

from bot.access import AccessPolicy, Rule, RuleError, parse_rules
from bot.settings.reader import Reader, SettingsError


def read(r: Reader) -> AccessPolicy:
    return AccessPolicy(_rules("VPN_USERS", r.text("VPN_USERS", "")), _rules("VPN_ADMINS", r.text("VPN_ADMINS", "")))


def _rules(name: str, text: str) -> tuple[Rule, ...]:
    try:
        return parse_rules(text)
    except RuleError as exc:
        raise SettingsError(f"{name}: {exc}") from None
