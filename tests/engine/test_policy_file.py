"""The per-group policy file: table-driven parsing (each bad file is one line naming the entry), the
settings that go with it, first match wins with the environment as fallback, and what each person's
entry does to their sessions and their help."""
from __future__ import annotations

import os
import time

import pytest

from bot.engine.policy_file import Approval, PolicyFileError, parse_approval, parse_policy
from bot.settings import Settings, SettingsError
from bot.store.model import SessionState
from tests.support.factories import incoming
from tests.support.governance import APP, GROUP_STAFF, CardChannel

G = GROUP_STAFF


@pytest.mark.parametrize("text, check", [
    ("", lambda e: e == ()),
    ('[[policy]]\nmatch = ["domain:example.org"]', lambda e: e[0].label == "policy #1" and e[0].max_minutes is None and e[0].approval is None),
    ('[[policy]]\nname = "contractors"\nmatch = "domain:partner.example, email:x@y.org"\nmax_minutes = 60\ndefault_minutes = 15',
     lambda e: e[0].label == "policy #1 ('contractors')" and len(e[0].match) == 2 and (e[0].max_minutes, e[0].default_minutes) == (60, 15)),
    (f'[[policy]]\nmatch = ["group:{G.upper()}"]\nregions = ["WestEurope", "eastus"]\nproviders = "azure, host"',
     lambda e: e[0].match[0].value == G and e[0].regions == ("westeurope", "eastus") and e[0].providers == ("azure", "host")),
    ('[[policy]]\nmatch = ["domain:a.org"]\nallowed_ips = "10.0.0.0/8, 192.168.1.7/16"',
     lambda e: e[0].allowed_ips == ("10.0.0.0/8", "192.168.0.0/16")),
    ('[[policy]]\nmatch = ["domain:a.org"]\nallowed_ips = ["10.0.0.0/8", "fd00::/8"]', lambda e: e[0].allowed_ips == ("10.0.0.0/8", "fd00::/8")),
    ('[[policy]]\nmatch = ["domain:a.org"]\napproval = "over:90"\napprovers = ["email:boss@a.org"]',
     lambda e: e[0].approval == Approval("over", 90) and e[0].approvers_text == "email:boss@a.org"),
    ('[[policy]]\nmatch = ["domain:a.org"]\n[[policy]]\nmatch = ["domain:b.org"]\napproval = "ALWAYS"',
     lambda e: [x.label for x in e] == ["policy #1", "policy #2"] and e[1].approval == Approval("always")),
])
def test_good_files(text, check):
    assert check(parse_policy(text, "p.toml"))


@pytest.mark.parametrize("text, message", [
    ("[[policy]\nmatch = 1", "p.toml: not valid TOML: "),
    ('title = "x"', "p.toml: unknown top-level key 'title'"),
    ("policy = 3", "p.toml: 'policy' must be [[policy]] tables"),
    ("[[policy]]\nmax_minutes = 5", "p.toml: policy #1: match is missing"),
    ('[[policy]]\nmatch = []', "p.toml: policy #1: match must be a list of rules"),
    ('[[policy]]\nmatch = ["domain:a.org"]\n[[policy]]\nname = "ops"\nmatch = ["teams"]', "p.toml: policy #2 ('ops'): match has a bad rule: 'teams' is not kind:value"),
    ('[[policy]]\nmatch = ["group:not-a-guid"]', "p.toml: policy #1: match has a bad rule: 'group:not-a-guid' is not group:<Entra group object id>"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nmax_minutes = 0', "p.toml: policy #1: max_minutes must be a whole number of minutes from 1 to 10080"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nmax_minutes = "60"', "policy #1: max_minutes must be a whole number"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nmax_minutes = true', "policy #1: max_minutes must be a whole number"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nmax_minutes = 30\ndefault_minutes = 45', "policy #1: default_minutes (45) must not exceed max_minutes (30)"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nregions = []', "policy #1: regions must be a list of names"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nregions = ["west europe"]', "policy #1: regions must be a list of names"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nallowed_ips = "10.0.0.0/33"', "policy #1: allowed_ips is not valid: '10.0.0.0/33' is not a network"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nallowed_ips = 10', "policy #1: allowed_ips must be networks"),
    ('[[policy]]\nmatch = ["domain:a.org"]\napproval = "sometimes"', "policy #1: approval must be never, always or over:<minutes>"),
    ('[[policy]]\nmatch = ["domain:a.org"]\napproval = "over:0"', "policy #1: approval must be never, always or over:<minutes>"),
    ('[[policy]]\nmatch = ["domain:a.org"]\napprovers = []', "policy #1: approvers must be a list of rules"),
    ('[[policy]]\nmatch = ["domain:a.org"]\nmaxminutes = 5', "policy #1: maxminutes is not a key of a policy entry"),
    ('[[policy]]\nname = "Not OK"\nmatch = ["domain:a.org"]', "name must be 1-40 lowercase letters"),
])
def test_bad_files_are_one_line_naming_the_entry(text, message):
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, "p.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text, expected", [
    ("never", Approval("never")), ("always", Approval("always")), ("over:60", Approval("over", 60)), (" OVER:5 ", Approval("over", 5)),
])
def test_approval_rules(text, expected):
    assert parse_approval(text) == expected
    assert expected.needed(61) is (expected.kind != "never") and expected.needed(5) is (expected.kind == "always")


@pytest.mark.parametrize("text", ["", "over", "over:", "over:-1", "over:x", "over:99999", "sometimes", "over:٣"])
def test_bad_approval_rules(text):
    with pytest.raises(ValueError):
        parse_approval(text)


def write(tmp_path, text: str):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("env, message", [
    ({"VPN_APPROVAL": "maybe"}, "VPN_APPROVAL='maybe' is not valid: expected never, always or over:<minutes>"),
    ({"VPN_APPROVAL": "always"}, "VPN_APPROVAL=always needs VPN_APPROVERS"),
    ({"VPN_APPROVERS": "email:"}, "VPN_APPROVERS: 'email:' is not kind:value"),
    ({"VPN_APPROVAL_TIMEOUT_MINUTES": "0"}, "VPN_APPROVAL_TIMEOUT_MINUTES=0 is out of range"),
    ({"VPN_GROUP_CACHE_SECONDS": "soon"}, "VPN_GROUP_CACHE_SECONDS='soon' is not a number"),
    ({"VPN_GRAPH_ENDPOINT": "http://graph.example"}, "VPN_GRAPH_ENDPOINT='http://graph.example' is not valid"),
    ({"VPN_USERS": f"group:{G}"}, "group: rules are checked with Microsoft Graph as the bot's own app: set MicrosoftAppId"),
    ({"VPN_APPROVERS": f"group:{G}"}, "set MicrosoftAppId"),
    ({"VPN_POLICY_FILE": "/nonexistent/policy.toml"}, "VPN_POLICY_FILE /nonexistent/policy.toml: no such file"),
])
def test_settings_errors_are_one_line(env, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_policy_file_stops_start_up_naming_the_entry(tmp_path):
    path = write(tmp_path, '[[policy]]\nmatch = ["domain:a.org"]\n\n[[policy]]\nname = "contractors"\nmatch = ["domain:b.org"]\napproval = "always"\n')
    with pytest.raises(SettingsError, match=r"policy #2 \('contractors'\): approval always needs approvers \(in the entry or VPN_APPROVERS\)"):
        Settings.from_env({"VPN_POLICY_FILE": str(path)})
    path.write_text(f'[[policy]]\nmatch = ["group:{G}"]\n')
    with pytest.raises(SettingsError, match="set MicrosoftAppId"):
        Settings.from_env({"VPN_POLICY_FILE": str(path)})
    assert Settings.from_env({"VPN_POLICY_FILE": str(path), **APP}).governance.policy[0].match[0].value == G
    # What `vpn-bot serve` prints and exits with.
    import subprocess
    import sys

    from tests.support.apprun import APP as APP_PY
    from tests.support.apprun import app_env

    path.write_text('[[policy]]\nmatch = ["domain:a.org"]\nmax_minutes = -5\n')
    out = subprocess.run([sys.executable, APP_PY, "serve"], env=app_env(tmp_path / "data", VPN_POLICY_FILE=str(path)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"configuration error: VPN_POLICY_FILE {path}: policy #1: max_minutes must be a whole number of minutes from 1 to 10080"]


POLICY = """
[[policy]]
name = "contractors"
match = ["domain:partner.example"]
max_minutes = 60
default_minutes = 20
regions = ["b", "c"]
allowed_ips = "10.0.0.0/8, 192.168.0.0/16"
approval = "always"
approvers = ["test:carol"]

[[policy]]
name = "ops"
match = ["test:olga", "domain:partner.example"]
max_minutes = 600
approval = "never"

[[policy]]
name = "elsewhere"
match = ["test:hans"]
providers = ["azure"]
"""


async def say(rt, text, user, email=None):
    await rt.dispatcher.handle(incoming(text, user=user, email=email))
    await rt.runner.wait_idle(30)


async def test_first_match_wins_and_the_environment_fills_in(make_runtime, tmp_path):
    ch = CardChannel()
    env = {"VPN_POLICY_FILE": str(write(tmp_path, POLICY)), "VPN_DRYRUN_REGIONS": "a,b,c", "VPN_APPROVERS": "test:bob",
           "VPN_APPROVAL": "over:120", "VPN_DRYRUN_STEP_SECONDS": 0, "WG_ALLOWED_IPS": "0.0.0.0/0"}
    async with make_runtime(users="test:alice,test:bob,test:carol", channels=[ch], **env) as rt:
        # Pat is on no allowlist: the contractors entry lets them in, with its limits.
        await say(rt, "/vpn help", "test:pat", email="pat@partner.example")
        help_text = ch.to("test:pat", "card")[-1]
        assert "Your sessions: up to 1 h 00 min (20 min unless you say), regions: b, c." in help_text
        assert "Every session needs an approval first" in help_text and "contractors" in help_text
        await say(rt, "/vpn start a", "test:pat", email="pat@partner.example")
        assert "Region 'a' is not available. Choose one of: b, c." in ch.to("test:pat")[-1]
        await say(rt, "/vpn start 61", "test:pat", email="pat@partner.example")
        assert "1 to 60 minutes" in ch.to("test:pat")[-1]
        await say(rt, "/vpn help", "test:carol")  # the entry's approver
        await say(rt, "/vpn start reason=quarterly audit", "test:pat", email="pat@partner.example")
        (s,) = await rt.store.sessions([SessionState.AWAITING_APPROVAL])
        assert (s.region, s.minutes, s.approvers, s.asked) == ("b", 20, "test:carol", "test:carol")
        await say(rt, f"/vpn approve {s.id}", "test:bob")  # VPN_APPROVERS, but not this entry's
        assert "not one of the approvers" in ch.to("test:bob")[-1]
        await say(rt, f"/vpn approve {s.id}", "test:carol")
        (config,) = [x for x in ch.sent if x.kind == "config"]
        assert "AllowedIPs = 10.0.0.0/8, 192.168.0.0/16" in config.delivery.config.reveal()  # the entry's split tunnel
        # Alice has no entry: the environment's values.
        await say(rt, "/vpn help", "test:alice")
        assert "up to 4 h 00 min (30 min unless you say), regions: a, b, c." in ch.to("test:alice", "card")[-1]
        assert "longer than 2 h 00 min need an approval" in ch.to("test:alice", "card")[-1]
        await say(rt, "/vpn start 90", "test:alice")
        alice = next(x for x in await rt.store.sessions([SessionState.READY]) if x.owner == "test:alice")
        assert alice.max_minutes == 120 and alice.allowed_ips == ""
        assert "AllowedIPs = 0.0.0.0/0" in [x for x in ch.sent if x.kind == "config"][-1].delivery.config.reveal()
        # Olga's entry has no approval and a long maximum; Hans's entry is for another provider.
        await say(rt, "/vpn start 500", "test:olga")
        assert len([x for x in await rt.store.sessions([SessionState.READY]) if x.owner == "test:olga"]) == 1
        await say(rt, "/vpn start", "test:hans")
        assert "does not include this VPN's dryrun servers (only: azure)" in ch.to("test:hans")[-1]


async def test_the_policy_file_is_reread_when_it_changes_and_a_bad_edit_keeps_it(make_runtime, tmp_path, caplog):
    path = write(tmp_path, '[[policy]]\nmatch = ["test:pat"]\n')
    ch = CardChannel()
    async with make_runtime(users="test:alice", channels=[ch], VPN_POLICY_FILE=str(path), VPN_DRYRUN_STEP_SECONDS=0) as rt:
        await say(rt, "/vpn start", "test:pat")
        (s,) = await rt.store.sessions([SessionState.READY])
        path.write_text('[[policy]]\nmatch = ["test:pat"]\nmax_minutes = oops\n')
        os.utime(path, (time.time() + 5, time.time() + 5))
        await rt.service.sweep()
        await rt.runner.wait_idle(30)
        assert "keeping the policy in force" in caplog.text
        assert (await rt.store.get(s.id)).state is SessionState.READY
        path.write_text('[[policy]]\nmatch = ["test:someone-else"]\n')  # Pat is taken out of the policy
        os.utime(path, (time.time() + 10, time.time() + 10))
        await rt.service.sweep()
        await rt.runner.wait_idle(30)
        assert (await rt.store.get(s.id)).state is SessionState.DELETED
        assert any("your access was withdrawn" in t for t in ch.to("test:pat"))


async def test_the_groups_asked_about_follow_a_reread_policy_file(tmp_path):
    """`wanted_groups` (asked on every message) is kept between messages and made again when the file changes."""
    from bot.access import AccessPolicy
    from bot.engine.config import SessionPolicy
    from bot.engine.policy import Policy
    from bot.store.model import utcnow

    path = write(tmp_path, '[[policy]]\nmatch = ["domain:b.org"]\n')
    governance = Settings.from_env({"VPN_POLICY_FILE": str(path), "VPN_USERS": "domain:a.org"}).governance
    policy = Policy(AccessPolicy.from_text("domain:a.org", ""), SessionPolicy(), None, utcnow, governance=governance)  # type: ignore[arg-type]
    assert policy.wanted_groups == frozenset() and policy.wanted_groups is policy.wanted_groups
    path.write_text(f'[[policy]]\nmatch = ["group:{G}"]\n')
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert await policy.reload_if_changed()
    assert policy.wanted_groups == {G}


def test_a_repeatable_rule_is_never_audited():
    """Rule.repeatable skips the store's record of a re-sent message: only for what writes nothing, so
    a copy answered again on another replica cannot write a second row."""
    from bot.engine.policy import RULES

    assert [a for a, r in RULES.items() if r.repeatable and r.audited] == []
    assert {a.value for a, r in RULES.items() if r.repeatable} == {"help", "pending"}
