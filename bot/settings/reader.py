"""Reading the environment and `.env`: one reader, one-line errors, the parse helpers every section shares.

A bad value stops the process with one line that names the variable and says what it expects; a
name in our prefixes that no section reads (a typo such as VPN_SESION_MINUTES) is a one-line warning.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
N = TypeVar("N", int, float)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names in these prefixes are ours: one no section reads is a typo worth a warning.
CHECKED_PREFIXES = ("VPN_", "AZURE_", "TEAMS_", "GROUPME_")
# Read elsewhere, not by a section: the `.env` file's own name, and what the Azure SDKs read for
# themselves (azure-identity's EnvironmentCredential, workload and managed identity, azure-core's
# logging and tracing). AWS_* is not checked at all: the AWS SDK reads dozens of its own.
READ_ELSEWHERE = frozenset({
    "VPN_ENV_FILE",
    # azure-identity (EnvironmentCredential, workload identity, the AKS token proxy, the credential chain)
    "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST", "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN",
    "AZURE_USERNAME", "AZURE_PASSWORD", "AZURE_REGIONAL_AUTHORITY_NAME", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH", "AZURE_TOKEN_CREDENTIALS", "AZURE_ADDITIONALLY_ALLOWED_TENANTS",
    "AZURE_KUBERNETES_CA_DATA", "AZURE_KUBERNETES_CA_FILE", "AZURE_KUBERNETES_SNI_NAME", "AZURE_KUBERNETES_TOKEN_PROXY",
    # azure-core (logging, tracing, user agent, cloud)
    "AZURE_LOG_LEVEL", "AZURE_TRACING_ENABLED", "AZURE_SDK_TRACING_IMPLEMENTATION", "AZURE_HTTP_USER_AGENT",
    "AZURE_SDK_CLOUD_CONF", "AZURE_SDK_LOGGING_MULTIRECORD", "AZURE_CLOUD",
    # the Azure CLI, in an admin's shell (its config as AZURE_<SECTION>_<KEY> is below)
    "AZURE_CONFIG_DIR", "AZURE_EXTENSION_DIR",
})
READ_ELSEWHERE_PREFIXES = ("AZURE_CORE_", "AZURE_DEFAULTS_", "AZURE_CLOUD_")


class SettingsError(ValueError):
    """One bad variable, with a message fit to print to an operator."""


class Reader:
    """Reads one environment; remembers every name asked for, so the unread ones can be reported."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.seen: set[str] = set()

    def text(self, name: str, default: str) -> str:
        self.seen.add(name)
        return self.env.get(name, default).strip()

    def parse(self, name: str, default: str, fn: Callable[[str], T], expects: str) -> T:
        raw = self.text(name, default)
        try:
            return fn(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not valid: expected {expects}") from None

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        return self._bounded(name, default, lo, hi, int, "a whole number")

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        return self._bounded(name, default, lo, hi, float, "a number")

    def _bounded(self, name: str, default: N, lo: N, hi: N, cast: Callable[[str], N], kind: str) -> N:
        raw = self.text(name, str(default)) or str(default)
        try:
            value = cast(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not {kind}") from None
        if not lo <= value <= hi:
            raise SettingsError(f"{name}={value} is out of range: expected {lo} to {hi}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...], upper: bool = False) -> str:
        raw = self.text(name, default) or default
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise SettingsError(f"{name}={raw!r} is not one of: {', '.join(choices)}")
        return value

    def flag(self, name: str) -> bool:
        return self.choice(name, "0", ("0", "1")) == "1"

    def unread(self) -> tuple[str, ...]:
        """One line per name in our prefixes that nothing reads, with the nearest real name when there is one."""
        lines = []
        for name in sorted(self.env):
            if not name.startswith(CHECKED_PREFIXES) or name in self.seen or name in READ_ELSEWHERE or name.startswith(READ_ELSEWHERE_PREFIXES):
                continue
            near = difflib.get_close_matches(name, self.seen, n=1, cutoff=0.8)
            hint = f" (did you mean {near[0]}?)" if near else ""
            lines.append(f"{name} is not a setting this version reads{hint}; it is ignored")
        return tuple(lines)


def environment() -> dict[str, str]:
    """The process environment over the `.env` file (`VPN_ENV_FILE`): the real environment wins."""
    return {**read_env_file(Path(os.environ.get("VPN_ENV_FILE", ".env"))), **os.environ}


def read_env_file(path: Path) -> dict[str, str]:
    """`NAME=value` lines as docker's --env-file reads them (plus `export ` and quotes); missing file: {}."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SettingsError(f"{path} line {number}: expected NAME=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


# ----- parse helpers: each takes the raw text and returns the value or raises ValueError ----------

def table_prefix(text: str) -> str:
    # Table names are 3-63 letters or digits starting with a letter; the longest suffix is 10 characters.
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,29}", text):
        raise ValueError(text)
    return text


def guid_or_empty(text: str) -> str:
    return guid_list(text)[0] if text else ""


def origin_list(text: str) -> tuple[str, ...]:
    origins = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        parts = urlsplit(item)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.path not in ("", "/") or parts.query or "*" in item:
            raise ValueError(text)
        origins.append(f"{parts.scheme}://{parts.netloc}".lower())
    return tuple(origins)


def app_type(text: str) -> str:
    # MultiTenant: existing registrations still work (the channel warns); new ones cannot be made.
    for name in ("SingleTenant", "UserAssignedMSI", "MultiTenant"):
        if text.lower() == name.lower():
            return name
    raise ValueError(text)


def host_patterns(text: str) -> tuple[str, ...]:
    hosts = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if not hosts or not all(re.fullmatch(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", h) for h in hosts):
        raise ValueError(text)
    return hosts


def guid_list(text: str) -> tuple[str, ...]:
    ids = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if not all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", i) for i in ids):
        raise ValueError(text)
    return ids


def groupme_bots(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`GROUPME_BOT_ID`: a plain bot id, and/or `group:bot` pairs so each group replies via its own bot."""
    plain: list[str] = []
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        group, sep, bot = part.rpartition(":")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", bot) or (sep and not (group.isascii() and group.isdigit())):
            raise ValueError(text)
        if not sep:
            plain.append(bot)
        elif pairs.setdefault(group, bot) != bot:
            raise ValueError(text)
    if len(plain) > 1:
        raise ValueError(text)
    return (plain[0] if plain else ""), tuple(pairs.items())


def union(ids: tuple[str, ...], pairs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*ids, *(g for g, _ in pairs))))


def digit_list(text: str) -> tuple[str, ...]:
    ids = tuple(p.strip() for p in text.split(",") if p.strip())
    if not all(i.isdigit() and i.isascii() for i in ids):
        raise ValueError(text)
    return ids


def resource_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", text):
        raise ValueError(text)
    return text


def deployment_id(text: str) -> str:
    if text and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", text):
        raise ValueError(text)
    return text


def region(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{2,40}", text.lower()):
        raise ValueError(text)
    return text.lower()


def region_list(text: str) -> tuple[str, ...]:
    return tuple(region(p.strip()) for p in text.split(",") if p.strip())


def public_url(text: str) -> str:
    if not text:
        return ""
    parts = urlsplit(text)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme not in ("https", "http") or not parts.hostname or (parts.scheme == "http" and not local):
        raise ValueError(text)
    return text.rstrip("/")


def interface_name(text: str) -> str:
    from provisioner.wireguard import is_valid_tunnel_name

    if not is_valid_tunnel_name(text):
        raise ValueError(text)
    return text


def pool(text: str) -> IPNetwork:
    net = ipaddress.ip_network(text, strict=False)
    if net.num_addresses < 4:
        raise ValueError(text)
    return net


def dns_list(text: str) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_address(p.strip())) for p in text.split(",") if p.strip())


def name_list(text: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    if not names or not all(n.replace("-", "").isalnum() and n.isascii() for n in names):
        raise ValueError(text)
    return names
