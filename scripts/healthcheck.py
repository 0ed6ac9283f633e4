"""Container health check: healthy only if /healthz answers on an address other containers can reach.

Asking 127.0.0.1 would pass for a bot that bound loopback only (HOST=127.0.0.1 from a copied .env)
and that nobody outside the container can reach. So this asks the host's global addresses, as a
peer would; only where there are none (`--network none`) does it fall back to loopback.
Standard library only; exit 0 healthy, 1 not (one line on stderr says why).
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import urllib.request


def reachable_addresses() -> list[str]:
    """This host's global IPv4 addresses (`ip`, else the hostname's), loopback only as a last resort."""
    found: list[str] = []
    if shutil.which("ip"):
        out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=3).stdout
        found = [fields[3].split("/")[0] for fields in (line.split() for line in out.splitlines()) if len(fields) > 3]
    if not found:
        try:
            found = socket.gethostbyname_ex(socket.gethostname())[2]
        except OSError:
            found = []
    found = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return found or ["127.0.0.1"]


def main() -> int:
    port = os.environ.get("PORT", "3978")
    failures = []
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP(S)_PROXY
    for address in reachable_addresses():
        url = f"http://{address}:{port}/healthz"
        try:
            with opener.open(url, timeout=3) as response:
                if response.status == 200:
                    return 0
                failures.append(f"{url}: HTTP {response.status}")
        except OSError as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
    host = os.environ.get("HOST", "")
    hint = f" (HOST={host} binds loopback only: unset it or set 0.0.0.0)" if host.startswith("127.") or host == "localhost" else ""
    print(f"unhealthy: {'; '.join(failures)}{hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
