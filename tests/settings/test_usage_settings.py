"""The usage section (issue 23): defaults, values, and one-line errors that name the variable."""
from __future__ import annotations

import pytest

from bot.engine.usage import UsageConfig
from bot.settings import Settings, SettingsError


@pytest.mark.parametrize("env, expected", [
    ({}, UsageConfig()),
    ({"VPN_USAGE_RETENTION_DAYS": "30"}, UsageConfig(retention_days=30)),
    ({"VPN_IDLE_MINUTES": "30", "VPN_MAX_MB": "500"}, UsageConfig(idle_minutes=30, max_mb=500)),
    ({"VPN_IDLE_MINUTES": "2", "VPN_WARN_MINUTES": "1", "VPN_TRAFFIC_SECONDS": "15"}, UsageConfig(idle_minutes=2, traffic_seconds=15.0)),
    ({"VPN_IDLE_MINUTES": "3", "VPN_WARN_MINUTES": "0"}, UsageConfig(idle_minutes=3)),  # no warnings at all: allowed
])
def test_the_usage_section_reads_its_defaults_and_values(env, expected):
    assert Settings.from_env(env).usage == expected


@pytest.mark.parametrize("env, message", [
    ({"VPN_USAGE_RETENTION_DAYS": "0"}, "VPN_USAGE_RETENTION_DAYS=0 is out of range: expected 1 to 36500"),
    ({"VPN_IDLE_MINUTES": "soon"}, "VPN_IDLE_MINUTES='soon' is not a whole number"),
    ({"VPN_MAX_MB": "-1"}, "VPN_MAX_MB=-1 is out of range: expected 0 to 1000000000"),
    ({"VPN_TRAFFIC_SECONDS": "0.5"}, "VPN_TRAFFIC_SECONDS=0.5 is out of range: expected 1.0 to 3600.0"),
    ({"VPN_IDLE_MINUTES": "5"}, "VPN_IDLE_MINUTES (5) must be longer than VPN_WARN_MINUTES (5)"),
])
def test_each_error_is_one_line_naming_the_variable(env, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
