"""Access governance settings: approvals, Entra groups through Microsoft Graph, the per-group policy file.

`read(r)` validates every variable and the policy file, with the same one-line SettingsError as every
other section (docs/governance.md explains every variable).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bot.access import RuleError, group_ids, parse_rules
from bot.engine.policy_file import LONGEST, NEVER, Approval, PolicyEntry, PolicyFileError, load_policy, parse_approval
from bot.settings.reader import Reader, SettingsError

PUBLIC_GRAPH = "https://graph.microsoft.com"


@dataclass(frozen=True)
class GovernanceSettings:
    approvers: str = ""  # VPN_APPROVERS: rules in the VPN_USERS syntax
    approval: Approval = NEVER  # VPN_APPROVAL
    approval_timeout_minutes: int = 60
    group_cache_seconds: float = 300.0
    graph_endpoint: str = PUBLIC_GRAPH
    policy_file: Path | None = None
    policy: tuple[PolicyEntry, ...] = field(default=(), repr=False)  # the file's entries as read at start-up
    policy_stamp: tuple[float, int] | None = None  # its mtime and size then: a later change is re-read

    @property
    def uses_groups(self) -> bool:
        return any(entry.group_ids for entry in self.policy) or bool(group_ids(parse_rules(self.approvers)))


def read(r: Reader) -> GovernanceSettings:
    approvers = r.text("VPN_APPROVERS", "")
    try:
        approver_rules = parse_rules(approvers)
    except RuleError as exc:
        raise SettingsError(f"VPN_APPROVERS: {exc}") from None
    approval = r.parse("VPN_APPROVAL", "never", parse_approval, "never, always or over:<minutes> (only longer sessions need an approval)")
    timeout = r.integer("VPN_APPROVAL_TIMEOUT_MINUTES", 60, 1, LONGEST)
    cache = r.number("VPN_GROUP_CACHE_SECONDS", 300.0, 0.0, 86400.0)
    graph = r.parse("VPN_GRAPH_ENDPOINT", PUBLIC_GRAPH, _https_url, "an https:// URL such as https://graph.microsoft.com (https://graph.microsoft.us in GCC High)")
    path_text = r.text("VPN_POLICY_FILE", "")
    policy: tuple[PolicyEntry, ...] = ()
    stamp = None
    if path_text:
        try:
            st = os.stat(path_text)  # before reading: a change made meanwhile is re-read later
            stamp = (st.st_mtime, st.st_size)
        except OSError:
            pass  # load_policy says what is wrong
        try:
            policy = load_policy(Path(path_text))
        except PolicyFileError as exc:
            raise SettingsError(str(exc)) from None
    if approval.kind != "never" and not approver_rules:
        raise SettingsError(f"VPN_APPROVAL={approval} needs VPN_APPROVERS: who may approve (VPN_USERS syntax)")
    for entry in policy:
        needs = entry.approval if entry.approval is not None else approval
        if needs.kind != "never" and not (entry.approvers or approver_rules):
            raise SettingsError(f"VPN_POLICY_FILE {path_text}: {entry.label}: approval {needs} needs approvers (in the entry or VPN_APPROVERS)")
    settings = GovernanceSettings(approvers, approval, timeout, cache, graph, Path(path_text) if path_text else None, policy, stamp)
    named = settings.uses_groups
    for name in ("VPN_USERS", "VPN_ADMINS"):
        try:
            named = named or bool(group_ids(parse_rules(r.text(name, ""))))
        except RuleError:
            pass  # reported with the allowlist itself
    if named and not r.text("MicrosoftAppId", ""):
        raise SettingsError(
            "group: rules are checked with Microsoft Graph as the bot's own app: set MicrosoftAppId (with MicrosoftAppPassword, "
            "or MicrosoftAppType=UserAssignedMSI) and grant it GroupMember.Read.All and User.Read.All (docs/governance.md)"
        )
    return settings


def _https_url(text: str) -> str:
    parts = urlsplit(text)
    local = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and local) or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(text)
    return text.rstrip("/")
