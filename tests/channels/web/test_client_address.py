"""VPN_TRUSTED_PROXIES: which X-Forwarded-For entry is the client (issue 18.9). A table of cases."""
from __future__ import annotations

import pytest

from bot.channels.web.client_address import TrustedProxies, client_address, parse_trusted_proxies
from bot.settings import Settings, SettingsError

NONE = parse_trusted_proxies("")
ONE = parse_trusted_proxies("1")
TWO = parse_trusted_proxies("2")
NETS = parse_trusted_proxies("10.0.0.0/8, 2001:db8:ffff::/48")

CASES = [
    # (peer, X-Forwarded-For headers, trusted, client)
    ("192.0.2.1", [], NONE, "192.0.2.1"),
    ("192.0.2.1", ["203.0.113.5"], NONE, "192.0.2.1"),  # no proxy configured: the header is ignored
    ("10.0.0.2", ["203.0.113.5"], ONE, "203.0.113.5"),  # Container Apps' ingress: one hop
    ("10.0.0.2", ["6.6.6.6, 203.0.113.5"], ONE, "203.0.113.5"),  # the client's own entry (left) is not believed
    ("10.0.0.2", ["6.6.6.6", "203.0.113.5"], ONE, "203.0.113.5"),  # several headers read as one list, in order
    ("10.0.0.2", [], ONE, "10.0.0.2"),  # no header: the peer
    ("10.0.0.3", ["6.6.6.6, 203.0.113.5, 10.0.0.2"], TWO, "203.0.113.5"),  # two hops
    ("10.0.0.3", ["203.0.113.5"], TWO, "203.0.113.5"),  # fewer entries than hops: the leftmost there is
    ("10.0.0.2", ["garbage"], ONE, "10.0.0.2"),  # what a trusted hop wrote is no address: stop at that hop
    ("10.0.0.2", ["203.0.113.5:4711"], ONE, "203.0.113.5"),  # v4:port
    ("10.0.0.2", ["[2001:db8::7]:443"], ONE, "2001:db8::7"),  # [v6]:port
    ("10.0.0.2", [" 2001:DB8::7 "], ONE, "2001:db8::7"),
    ("::ffff:10.0.0.2", ["::ffff:203.0.113.5"], ONE, "203.0.113.5"),  # v4-mapped v6 reads as v4
    ("10.0.0.2", ["6.6.6.6, 203.0.113.5, 10.1.2.3"], NETS, "203.0.113.5"),  # CIDRs: past every trusted address
    ("10.0.0.2", ["10.9.9.9, 10.1.2.3"], NETS, "10.9.9.9"),  # all trusted: the leftmost
    ("192.0.2.1", ["203.0.113.5"], NETS, "192.0.2.1"),  # the peer is no trusted proxy: its header is not believed
    ("2001:db8:ffff::1", ["2001:db8::9"], NETS, "2001:db8::9"),
    ("10.0.0.2", ["6.6.6.6, nonsense, 10.1.2.3"], NETS, "10.1.2.3"),  # garbage left of a trusted hop: the hop
    (None, ["203.0.113.5"], ONE, "unknown"),
    ("not-an-ip", ["203.0.113.5"], ONE, "not-an-ip"),  # a unix socket's peer: nothing to vouch for it
]


@pytest.mark.parametrize("peer,headers,trusted,client", CASES)
def test_client_address(peer, headers, trusted, client):
    assert client_address(peer, headers, trusted) == client


@pytest.mark.parametrize("text,parsed", [
    ("", TrustedProxies()), ("0", TrustedProxies()), ("1", TrustedProxies(hops=1)), (" 3 ", TrustedProxies(hops=3)),
    ("10.0.0.0/8", TrustedProxies(networks=(parse_trusted_proxies("10.0.0.0/8").networks[0],))),
])
def test_parse(text, parsed):
    assert parse_trusted_proxies(text) == parsed


@pytest.mark.parametrize("text", ["-1", "21", "ten", "10.0.0.0/33", "10.0.0.0/8,", "1.2.3.4/8/9", "1, 10.0.0.0/8"])
def test_parse_refuses(text):
    with pytest.raises(ValueError):
        parse_trusted_proxies(text)


def test_the_setting_names_itself_when_wrong():
    secret = {"VPN_LOCAL_AUTH_SECRET": "s" * 32}  # the web section exists only when sign-in is configured
    assert Settings.from_env({**secret, "VPN_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.5"}).web.trusted_proxies.networks[1].prefixlen == 32
    assert Settings.from_env(secret).web.trusted_proxies == TrustedProxies()
    with pytest.raises(SettingsError, match="VPN_TRUSTED_PROXIES"):
        Settings.from_env({"VPN_TRUSTED_PROXIES": "the ingress"})
    assert Settings.from_env({}).sessions.audit_retention_days == 400
    with pytest.raises(SettingsError, match="VPN_AUDIT_RETENTION_DAYS"):
        Settings.from_env({"VPN_AUDIT_RETENTION_DAYS": "0"})
