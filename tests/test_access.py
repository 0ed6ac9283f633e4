"""Allowlist and roles: stable ids and verified emails only; empty allowlist blocks everyone."""
import pytest

from bot.access import AccessPolicy, Role, RuleError, parse_rules
from bot.messages import Identity, InvalidIdentity, UserKey


def who(key: str, email: str | None = None, name: str = "") -> Identity:
    return Identity(UserKey.parse(key), email=email, display_name=name)


POLICY = AccessPolicy.from_text(
    users="teams:00000000-AAAA-0000-0000-000000000001, groupme:123, domain:example.org, email:Guest@Partner.com",
    admins="teams:00000000-0000-0000-0000-0000000000ff, email:boss@example.org",
)


@pytest.mark.parametrize(
    "identity, role",
    [
        (who("teams:00000000-aaaa-0000-0000-000000000001"), Role.USER),  # GUID case does not matter
        (who("teams:00000000-0000-0000-0000-0000000000ff"), Role.ADMIN),
        (who("groupme:123"), Role.USER),
        (who("groupme:1234"), None),
        (who("groupme:12"), None),
        (who("teams:123"), None),  # same id, other channel
        (who("groupme:999", name="groupme:123"), None),  # display names never count
        (who("teams:x", email="someone@example.org"), Role.USER),
        (who("teams:x", email="SOMEONE@EXAMPLE.ORG"), Role.USER),
        (who("teams:x", email="boss@example.org"), Role.ADMIN),
        (who("teams:x", email="someone@sub.example.org"), None),  # no subdomains
        (who("teams:x", email="someone@evilexample.org"), None),
        (who("teams:x", email="someone@example.org.evil.com"), None),
        (who("teams:x", email="@example.org"), None),
        (who("teams:x", email="guest@partner.com"), Role.USER),
        (who("teams:x", email="boss@ехample.org"), None),  # Cyrillic х look-alike
        (who("teams:x", email="ｂｏｓｓ@example.org"), Role.ADMIN),  # full-width normalises to what it renders as
        (who("console:root"), None),
    ],
)
def test_roles(identity, role):
    assert POLICY.role_of(identity) is role


def test_empty_allowlist_refuses_everyone_but_the_local_operator():
    policy = AccessPolicy.from_text("", "").with_operator(UserKey("console", "alice"))
    assert policy.role_of(who("console:alice")) is Role.ADMIN
    assert policy.role_of(who("console:bob")) is None
    assert policy.role_of(who("teams:alice")) is None
    assert policy.role_of(who("teams:x", email="alice@example.org")) is None


@pytest.mark.parametrize(
    "text",
    ["teams", "teams:", "email:nobody", "email:@x.org", "domain:localhost", "domain:a@b.org", "teams:a\x00b", "x" * 300 + ":1", "team s:1"],
)
def test_bad_rules_are_refused(text):
    with pytest.raises(RuleError):
        parse_rules(text)


def test_rules_ignore_blank_items():
    assert len(parse_rules(" , teams:1 ,, groupme:2 ,")) == 2


@pytest.mark.parametrize("text", ["", "nochannel", "teams:", ":id", "teams:a b", "teams:\u202eevil", "teams:" + "x" * 300])
def test_bad_identities_are_refused(text):
    with pytest.raises(InvalidIdentity):
        UserKey.parse(text)


def test_an_id_allowlist_of_any_length_answers_as_a_rule_by_rule_scan():
    """Id rules are looked up in a set (one lookup per message however long VPN_USERS is): same answers."""
    ids = [f"teams:00000000-0000-0000-0000-{i:012d}" for i in range(300)]
    rules = ", ".join(ids[:200] + ["domain:example.org", "email:Guest@Partner.com"])
    policy = AccessPolicy.from_text(rules, ", ".join(ids[190:210] + ["email:boss@example.org"]))
    users, admins = parse_rules(rules), parse_rules(", ".join(ids[190:210] + ["email:boss@example.org"]))
    people = [who(i) for i in ids] + [who(ids[5].upper()), who(ids[5], email="boss@example.org"), who(ids[250], email="x@example.org"),
                                       who("groupme:00000000-0000-0000-0000-000000000005"), who("teams:x", email="guest@partner.com")]
    for person in people:
        expected = Role.ADMIN if any(r.matches(person) for r in admins) else Role.USER if any(r.matches(person) for r in users) else None
        assert policy.role_of(person) is expected, person
    assert policy.role_of(who(ids[5], email="boss@example.org")) is Role.ADMIN  # a user by id, an admin by email
    assert policy.role_of(who(ids[195])) is Role.ADMIN and policy.role_of(who(ids[250])) is None


def test_identity_parts_refuse_exactly_unicode_other_and_separator_characters():
    import sys
    import unicodedata

    points = [*range(0, sys.maxunicode + 1, 7), 0x20, 0xA0, 0xAD, 0x2028, 0x202E, 0x3000, 0xD800, 0xDFFF, 0xE000, 0xFEFF, 0x10FFFF]
    for point in points:
        char = chr(point)
        refused = unicodedata.category(char)[0] in "CZ"
        try:
            UserKey("teams", f"a{char}b")
        except InvalidIdentity:
            assert refused, hex(point)
        else:
            assert not refused, hex(point)
