"""The client's address behind reverse proxies: X-Forwarded-For, believed only through trusted hops.

`VPN_TRUSTED_PROXIES` says which proxies stand in front of the app: a hop count (`1` for Container
Apps' ingress or one nginx) or comma-separated CIDRs (`10.0.0.0/8, 192.168.1.5/32`). Each trusted
proxy appends the address it saw to X-Forwarded-For, so the client is found by walking the header
from the right: past `N` hops, or past every address inside the trusted networks (the connection's
own peer counts as the first hop). Anything to the left of that point was written by the client and
is never believed. With no setting (the default) the header is ignored: the peer is the client.

Pure functions, no I/O: tests/channels/web/test_client_address.py is their table.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 20


@dataclass(frozen=True)
class TrustedProxies:
    hops: int = 0  # this many proxies in front, whatever their addresses
    networks: tuple[IPNetwork, ...] = ()  # or: proxies are the addresses inside these

    @property
    def enabled(self) -> bool:
        return bool(self.hops or self.networks)

    def __str__(self) -> str:
        if self.networks:
            return ", ".join(str(n) for n in self.networks)
        return str(self.hops)


def parse_trusted_proxies(text: str) -> TrustedProxies:
    """`""` or `0` (none), a hop count 1-20, or comma-separated CIDRs / addresses; ValueError otherwise."""
    text = text.strip()
    if not text:
        return TrustedProxies()
    if text.isdigit():
        hops = int(text)
        if hops > MAX_HOPS:
            raise ValueError(text)
        return TrustedProxies(hops=hops)
    networks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(text)
        networks.append(ipaddress.ip_network(part, strict=False))  # ValueError for anything else
    return TrustedProxies(networks=tuple(networks))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a proxy writes it: bare, `[v6]`, `[v6]:port` or `v4:port`; None if it is none of these."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port (a bare IPv6 address has at least two colons)
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: TrustedProxies) -> str:
    """The client's address: `peer` (the connection's), or the entry of the X-Forwarded-For headers
    (every one, in order) that the trusted hops vouch for. "unknown" when there is no peer."""
    peer_ip = _ip(peer) if peer else None
    peer_text = str(peer_ip) if peer_ip else (peer or "unknown")
    if not trusted.enabled or peer_ip is None:
        return peer_text
    chain: list[str] = [entry for header in forwarded_for for entry in header.split(",")]
    if trusted.networks:
        if not _inside(peer_ip, trusted.networks):
            return peer_text  # not from a trusted proxy: its header is the client's own words
        found = peer_ip
        for entry in reversed(chain):
            ip = _ip(entry)
            if ip is None:
                break  # garbage where a trusted proxy would have written an address: stop at the last proxy
            found = ip
            if not _inside(ip, trusted.networks):
                break
        return str(found)
    # A hop count: the peer is hop 1; hop k wrote the entry k-1 from the right.
    found = peer_ip
    for entry in list(reversed(chain))[: trusted.hops]:
        ip = _ip(entry)
        if ip is None:
            break
        found = ip
    return str(found)


def _inside(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)
