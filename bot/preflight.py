"""Start-up checks that turn the first hour's usual mistakes into one line instead of a traceback later."""
from __future__ import annotations

import errno
import os
import socket
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from bot.settings import Settings
from provisioner.host_setup import interface_exists


class StartupError(RuntimeError):
    """The process cannot do its job as configured; the message says what to change."""


def check(settings: Settings, command: str, out_dir: Path | None = None) -> None:
    writable_dir("VPN_DATA_DIR", settings.ops.data_dir)
    interface = settings.provider.wireguard.interface
    if settings.provider.kind == "host" and not interface_exists(interface):
        raise StartupError(
            f"WG_INTERFACE={interface}: no such network interface here; create it with "
            "`vpn-bot host-setup` (docs/how-it-works.md: the host provider)"
        )
    if settings.azure is not None:
        reachable("AZURE_ARM_ENDPOINT", settings.azure.arm_endpoint)
    if settings.aws is not None:
        from provisioner.aws import credentials_problem

        reachable("AWS_ENDPOINT_URL", settings.aws.endpoint_url or f"https://ec2.{settings.aws.region}.amazonaws.com")
        problem = credentials_problem(settings.aws.region)
        if problem:
            raise StartupError(problem)
    if out_dir is not None:
        writable_dir("--out", out_dir, create=False)  # made at the first delivery


def reachable(name: str, url: str, timeout: float = 5.0) -> None:
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # the SDK goes through it: so do we
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise StartupError(f"{name}={url} is unreachable ({reason}): check the network, proxy or the endpoint") from None


def writable_dir(name: str, path: Path, *, create: bool = True) -> None:
    """`path` is (or, without `create`, could be made) a folder this process can write in."""
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise StartupError(f"{name} {path}: cannot write there ({exc.strerror or exc}); choose another folder") from None


def listen_error(host: str, port: int, exc: OSError) -> StartupError:
    """A one-line reason `serve` could not bind."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{host}:{port} is already in use (another serve?): stop it or set PORT")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StartupError(f"{host}:{port}: not allowed to listen there (ports below 1024 need privileges): set PORT")
    return StartupError(f"cannot listen on {host}:{port}: {os.strerror(exc.errno) if exc.errno else exc} (check HOST and PORT)")
