"""A two-host WireGuard lab in network namespaces: a server host running the bot, a client host.

wireguard-go runs in userspace over /dev/net/tun (this kernel has no WireGuard module). Its control
sockets live in /var/run/wireguard/<name>.sock, shared by every namespace, so interface names carry
a per-run suffix, and every process started here is stopped on close.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "WG_PROCESS_FOREGROUND": "1"}
SERVER_LAN = "10.99.0.1"
CLIENT_LAN = "10.99.0.2"
TUNNEL_SERVER = "10.77.0.1"
POOL = "10.77.0.0/24"

ECHO_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND: binds even while a test re-addresses the interface
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
while True:
    c, _ = s.accept()
    data = c.recv(65536)
    c.sendall(b"echo:" + data); c.close()
"""
ECHO_CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.settimeout(float(sys.argv[3])); c.sendall(b"through the tunnel"); print(c.recv(100).decode())
except OSError as e:
    print("FAILED", type(e).__name__); sys.exit(1)
"""


def why_no_netns() -> str | None:
    """None if this machine can run the lab, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "wg", "wg-quick", "wireguard-go"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 wireguard-tools wireguard-go)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    probe = f"probe{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(*argv: str, input: bytes | None = None, check: bool = True) -> str:
    out = subprocess.run(argv, input=input, capture_output=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {out.stderr.decode()}")
    return out.stdout.decode()


class Lab:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.server_ns, self.client_ns = f"vpns-{tag}", f"vpnc-{tag}"
        self.server_if, self.client_if = f"wgs{tag}", f"wgc{tag}"
        self.procs: list[subprocess.Popen] = []
        self.port = 51820

    def __enter__(self) -> "Lab":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def in_server(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.server_ns, *argv]

    def in_client(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *argv]

    def _build(self) -> None:
        run("ip", "netns", "add", self.server_ns)
        run("ip", "netns", "add", self.client_ns)
        veth_s, veth_c = f"v{self.server_if[3:]}s", f"v{self.server_if[3:]}c"
        run("ip", "link", "add", veth_s, "netns", self.server_ns, "type", "veth", "peer", "name", veth_c, "netns", self.client_ns)
        for ns, dev, addr in ((self.server_ns, veth_s, SERVER_LAN), (self.client_ns, veth_c, CLIENT_LAN)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        self._wireguard_go(self.server_ns, self.server_if)
        key = run("wg", "genkey")
        run(*self.in_server("wg", "set", self.server_if, "private-key", "/dev/stdin", "listen-port", str(self.port)), input=key.encode())
        run("ip", "-n", self.server_ns, "addr", "add", f"{TUNNEL_SERVER}/24", "dev", self.server_if)
        run("ip", "-n", self.server_ns, "link", "set", self.server_if, "up")
        self._wireguard_go(self.client_ns, self.client_if)
        self.echo = self.spawn(self.in_server(sys.executable, "-c", ECHO_SERVER, TUNNEL_SERVER, "9000"))

    def _wireguard_go(self, ns: str, name: str) -> None:
        self.spawn(["ip", "netns", "exec", ns, "wireguard-go", name], env={**os.environ, **WG_ENV})
        sock = Path(f"/var/run/wireguard/{name}.sock")
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go did not create {sock}")
            time.sleep(0.05)

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(proc)
        return proc

    def server_peers(self) -> list[str]:
        return run(*self.in_server("wg", "show", self.server_if, "peers")).split()

    def apply_client_config(self, conf_path: Path) -> None:
        """What a user does: wg-quick's own parser strips the wg-quick-only keys, wg setconf applies the rest."""
        stripped = run("wg-quick", "strip", str(conf_path))
        address = next(line.split("=", 1)[1].strip() for line in conf_path.read_text().splitlines() if line.startswith("Address"))
        run(*self.in_client("wg", "setconf", self.client_if, "/dev/stdin"), input=stripped.encode())
        run("ip", "-n", self.client_ns, "addr", "flush", "dev", self.client_if)
        run("ip", "-n", self.client_ns, "addr", "add", address, "dev", self.client_if)
        run("ip", "-n", self.client_ns, "link", "set", self.client_if, "up")
        run("ip", "-n", self.client_ns, "route", "replace", POOL, "dev", self.client_if)

    def tcp_through_tunnel(self, timeout: float = 5.0) -> str:
        out = subprocess.run(self.in_client(sys.executable, "-c", ECHO_CLIENT, TUNNEL_SERVER, "9000", str(timeout)), capture_output=True, timeout=timeout * 3)
        return out.stdout.decode().strip()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in (self.server_ns, self.client_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for name in (self.server_if, self.client_if):
            Path(f"/var/run/wireguard/{name}.sock").unlink(missing_ok=True)


@contextlib.contextmanager
def bare_namespace(address: str):
    """A namespace with loopback and one "uplink" holding `address`/24, as a fresh host has; skips where impossible."""
    import pytest

    reason = why_no_netns()
    if reason:
        pytest.skip(reason)
    ns = f"bare-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for argv in (["link", "set", "lo", "up"], ["link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1"],
                     ["link", "set", "uplink1", "up"], ["address", "add", f"{address}/24", "dev", "uplink0"], ["link", "set", "uplink0", "up"]):
            subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
