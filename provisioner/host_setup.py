"""`vpn-bot host-setup`: the standing WireGuard interface the `host` provider issues peers on.

Plans first (what it will change, nothing done yet), then applies: the interface (kernel WireGuard
if the module is there, else wireguard-go), a fresh private key passed on stdin (never written to
disk), the pool's first address, the link up, IP forwarding, and masquerading of the pool's traffic
with nftables or iptables, whichever exists. Steps already in place are left out, so it can run again
(after a reboot: the interface and its peers are runtime state).
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from provisioner.wireguard import generate_keypair

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
WIREGUARD_GO_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
NFT_TABLE = "vpn_bot"


class HostSetupError(RuntimeError):
    """Something this machine lacks or refused; the message says what to do."""


@dataclass(frozen=True)
class Step:
    what: str  # shown to the operator before anything changes
    argv: tuple[str, ...] = ()
    stdin: bytes | None = field(default=None, repr=False)  # may carry the private key: never shown
    write: tuple[str, str] | None = None  # (path, text) instead of a command, e.g. a /proc/sys switch
    env: dict[str, str] | None = None
    fallback: tuple[str, ...] = ()  # run instead when argv fails (kernel WireGuard -> wireguard-go)

    def shown(self) -> str:
        how = f"echo {self.write[1]} > {self.write[0]}" if self.write else " ".join(self.argv)
        if self.fallback:
            how += f"   (if that fails: {' '.join(self.fallback)})"
        return f"{self.what}\n      $ {how}"


def interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def _output(argv: Sequence[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return done.returncode, done.stdout


def plan(
    interface: str,
    pool: Network,
    port: int,
    *,
    which: Callable[[str], str | None] = shutil.which,
    exists: Callable[[str], bool] = interface_exists,
    output: Callable[[Sequence[str]], tuple[int, str]] = _output,
    proc: Path = Path("/proc/sys"),
) -> list[Step]:
    """What would change on this machine, in order; empty when everything is already in place."""
    for tool in ("ip", "wg"):
        if which(tool) is None:
            raise HostSetupError(f"`{tool}` is missing: apt-get install {'iproute2' if tool == 'ip' else 'wireguard-tools'}")
    steps: list[Step] = []
    v6 = pool.version == 6
    address = f"{next(iter(pool.hosts()))}/{pool.prefixlen}"
    if not exists(interface):
        kernel = Path("/sys/module/wireguard").exists()
        userspace = which("wireguard-go")
        if not kernel and not userspace and which("modprobe") is None:
            raise HostSetupError("no WireGuard here: apt-get install wireguard-go (or use a kernel with the wireguard module)")
        create = ("ip", "link", "add", "dev", interface, "type", "wireguard")
        go = ("wireguard-go", interface) if userspace else ()
        if kernel or not userspace:
            steps.append(Step(f"create WireGuard interface {interface} (kernel module)", create, fallback=go, env=WIREGUARD_GO_ENV))
        else:
            steps.append(Step(f"create WireGuard interface {interface} (wireguard-go: no kernel module here)", go, env=WIREGUARD_GO_ENV))
        steps.append(Step(
            f"give {interface} a new private key (passed on stdin, not stored) and listen on UDP {port}",
            ("wg", "set", interface, "private-key", "/dev/stdin", "listen-port", str(port)),
            stdin=generate_keypair().private.reveal().encode() + b"\n",
        ))
    rc, addrs = output(("ip", "-o", "addr", "show", "dev", interface)) if exists(interface) else (1, "")
    if f" {address} " not in f" {addrs} ":
        steps.append(Step(f"address {interface} as {address} (the pool's first address; clients get the others)",
                          ("ip", "address", "add", address, "dev", interface)))
    if not exists(interface) or " UP" not in output(("ip", "-o", "link", "show", "dev", interface))[1].replace(",UP", " UP"):
        steps.append(Step(f"bring {interface} up", ("ip", "link", "set", "dev", interface, "up")))
    forward = proc / ("net/ipv6/conf/all/forwarding" if v6 else "net/ipv4/ip_forward")
    try:
        forwarding = forward.read_text().strip() == "1"
    except OSError:
        forwarding = False
    if not forwarding:
        steps.append(Step("turn on IP forwarding, so clients' traffic can leave through this host", write=(str(forward), "1")))
    steps += _masquerade(interface, pool, which, output)
    return steps


def _masquerade(interface: str, pool: Network, which, output) -> list[Step]:
    family = "ip6" if pool.version == 6 else "ip"
    if which("nft"):
        if output(("nft", "list", "table", family, NFT_TABLE))[0] == 0:
            return []
        rules = (
            f"table {family} {NFT_TABLE} {{\n"
            f"  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n"
            f'    {family} saddr {pool} oifname != "{interface}" masquerade\n  }}\n}}\n'
        )
        return [Step(f"masquerade {pool} leaving through other interfaces (nftables table {family} {NFT_TABLE})",
                     ("nft", "-f", "-"), stdin=rules.encode())]
    iptables = "ip6tables" if pool.version == 6 else "iptables"
    if which(iptables):
        rule = ("-s", str(pool), "!", "-o", interface, "-j", "MASQUERADE")
        if output((iptables, "-t", "nat", "-C", "POSTROUTING", *rule))[0] == 0:
            return []
        return [
            Step(f"masquerade {pool} leaving through other interfaces ({iptables})", (iptables, "-t", "nat", "-A", "POSTROUTING", *rule)),
            Step(f"let {interface}'s traffic through a FORWARD chain that drops by default", (iptables, "-I", "FORWARD", "-i", interface, "-j", "ACCEPT")),
            Step("…and its replies", (iptables, "-I", "FORWARD", "-o", interface, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")),
        ]
    raise HostSetupError("neither nft nor iptables is installed: apt-get install nftables (needed to masquerade clients' traffic)")


def apply(steps: Sequence[Step], say: Callable[[str], None] = print) -> None:
    """Run the steps in order; the first failure stops with what failed and why."""
    for step in steps:
        say(f"  {step.what}")
        if step.write:
            try:
                Path(step.write[0]).write_text(step.write[1] + "\n")
            except OSError as exc:
                raise HostSetupError(f"{step.what}: cannot write {step.write[0]}: {exc.strerror} (run as root)") from None
            continue
        error = _run(step.argv, step)
        if error and step.fallback:
            error = _run(step.fallback, step)
        if error:
            raise HostSetupError(f"{step.what}: {error}")


def _run(argv: Sequence[str], step: Step) -> str | None:
    env = {**os.environ, **(step.env or {})}
    try:
        done = subprocess.run(list(argv), input=step.stdin, capture_output=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}"
    if done.returncode != 0:
        return f"`{' '.join(argv)}` failed: {done.stderr.decode(errors='replace').strip()[:300]}"
    return None


def run_interactive(interface: str, pool: Network, port: int, *, yes: bool = False, ask: Callable[[str], str] = input) -> int:
    """`vpn-bot host-setup`: show the plan, ask (unless `yes`), apply; an exit status."""
    try:
        steps = plan(interface, pool, port)
        if not steps:
            print(f"{interface} is set up already: nothing to change")
            return 0
        print(f"host-setup will change this machine ({interface}, pool {pool}):")
        for number, step in enumerate(steps, 1):
            print(f"  {number}. {step.shown()}")
        if not yes:
            if not sys.stdin.isatty():
                print("host-setup: not a terminal to ask at: pass --yes to apply", file=sys.stderr)
                return 2
            if ask("Apply these changes? [y/N] ").strip().lower() not in ("y", "yes"):
                print("nothing changed")
                return 1
        apply(steps)
    except HostSetupError as exc:
        print(f"host-setup: {exc}", file=sys.stderr)
        return 1
    print(f"done. Now: VPN_PROVIDER=host WG_INTERFACE={interface} WG_ENDPOINT=<address clients dial>:{port}. "
          "The interface does not survive a reboot: run host-setup again at boot.")
    return 0
