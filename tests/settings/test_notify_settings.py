"""The notification section (issue 23): VPN_NOTIFY's targets and the webhook secret, one-line errors, and
the secret kept out of every repr."""
from __future__ import annotations

import pytest

from bot.engine.notify import NotifyConfig
from bot.settings import Settings, SettingsError

SECRET = "x" * 32
# Teams (dev mode) and GroupMe serving group 4242 through its own bot: chat targets need their channel on.
CHATS = {"VPN_DEV_MODE": "1", "GROUPME_BOT_ID": "4242:bot-4242", "GROUPME_CALLBACK_SECRET": "c" * 20}


@pytest.mark.parametrize("env, targets", [
    ({}, ()),
    ({"VPN_NOTIFY": "https://hooks.example.org/vpn", "VPN_NOTIFY_SECRET": SECRET}, ("https://hooks.example.org/vpn",)),
    ({"VPN_NOTIFY": " Teams:19:abc@thread.tacv2 , groupme:4242,groupme:4242", **CHATS}, ("teams:19:abc@thread.tacv2", "groupme:4242")),
    ({"VPN_NOTIFY": "http://127.0.0.1:8080/hook", "VPN_NOTIFY_SECRET": SECRET}, ("http://127.0.0.1:8080/hook",)),
])
def test_the_notify_section_reads_its_targets(env, targets):
    assert Settings.from_env(env).notify.targets == targets


@pytest.mark.parametrize("env, message", [
    ({"VPN_NOTIFY": "http://hooks.example.org/vpn", "VPN_NOTIFY_SECRET": SECRET}, "VPN_NOTIFY='http://hooks.example.org/vpn' is not valid"),
    ({"VPN_NOTIFY": "slack:general"}, "VPN_NOTIFY='slack:general' is not valid: expected comma-separated targets"),
    ({"VPN_NOTIFY": "teams:"}, "VPN_NOTIFY='teams:' is not valid"),
    ({"VPN_NOTIFY": "https://hooks.example.org/vpn"}, "VPN_NOTIFY_SECRET must be at least 16 characters with a webhook in VPN_NOTIFY"),
    ({"VPN_NOTIFY": "https://hooks.example.org/vpn", "VPN_NOTIFY_SECRET": "short"}, "VPN_NOTIFY_SECRET must be at least 16 characters"),
    ({"VPN_NOTIFY": "teams:19:abc@thread.tacv2"}, "VPN_NOTIFY names teams:19:abc@thread.tacv2 but Teams is off"),
    # A GroupMe bot posts only to its own group: a group the bot does not serve would get its notices posted elsewhere.
    ({"VPN_NOTIFY": "groupme:5555", **CHATS}, "VPN_NOTIFY names groupme:5555 but GroupMe does not serve group 5555"),
    ({"VPN_NOTIFY": "groupme:4242"}, "VPN_NOTIFY names groupme:4242 but GroupMe does not serve group 4242"),
    ({"VPN_NOTIFY": "teams:19:abc@thread.tacv2", "VPN_NOTIFY_TEAMS_URL": "http://smba.example.org/teams/", **CHATS},
     "VPN_NOTIFY_TEAMS_URL='http://smba.example.org/teams/' is not valid: expected an https:// URL"),
])
def test_each_error_is_one_line_naming_the_variable(env, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert SECRET not in str(err.value)


def test_the_secret_never_reaches_a_repr():
    settings = Settings.from_env({"VPN_NOTIFY": "https://hooks.example.org/vpn", "VPN_NOTIFY_SECRET": SECRET})
    assert settings.notify == NotifyConfig(("https://hooks.example.org/vpn",), SECRET)
    assert SECRET not in repr(settings) and SECRET not in repr(settings.notify)


def test_a_teams_target_goes_to_the_global_service_url_unless_told_otherwise():
    """A teams:<id> carries no service URL (a registered chat brings its own): Microsoft's global one, for the
    commercial cloud; VPN_NOTIFY_TEAMS_URL for a sovereign cloud (docs/usage.md)."""
    env = {"VPN_NOTIFY": "teams:19:abc@thread.tacv2", **CHATS}
    assert Settings.from_env(env).notify.teams_url == "https://smba.trafficmanager.net/teams/"
    gcc = Settings.from_env({**env, "VPN_NOTIFY_TEAMS_URL": "https://smba.infra.gcc.teams.microsoft.com/teams"})
    assert gcc.notify.teams_url == "https://smba.infra.gcc.teams.microsoft.com/teams/"
