"""Prometheus metrics: the registry, the counters and histograms, and one call per event the engine
and the chat front door report. No aiohttp here (the engine imports this): the HTTP middleware and
the /metrics endpoint on its own port are bot/http/metrics.py.

Counters and histograms live in this process (Prometheus scrapes each replica and sums). No label
ever carries a user's identity: only provider, state, stage, channel, outcome, reason, route.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
PROVISION_BUCKETS = (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)
# A closed set: a new failure kind maps to one of these, never to free text.
FAILURE_REASONS = ("provider", "timeout", "delivery", "interrupted", "internal")
CHAT_OUTCOMES = ("handled", "duplicate", "ignored", "refused", "usage", "error")

PROVISION_SECONDS = Histogram(
    "vpn_provision_seconds",
    "From /vpn start to the config delivered (stage=config) and to the server up (stage=server_up).",
    ["provider", "stage"],
    buckets=PROVISION_BUCKETS,
    registry=REGISTRY,
)
FAILURES = Counter("vpn_session_failures", "Sessions that failed before ready, by reason.", ["reason"], registry=REGISTRY)
TEARDOWNS = Counter("vpn_teardowns", "Sessions torn down (stop, expiry, admin).", ["provider"], registry=REGISTRY)
RECONCILE_DELETED = Counter(
    "vpn_reconcile_deleted", "Provider resources deleted by reconcile because no active session owned them.", ["provider"], registry=REGISTRY
)
CHAT_MESSAGES = Counter("vpn_chat_messages", "Chat messages by channel and outcome.", ["channel", "outcome"], registry=REGISTRY)
HTTP_SECONDS = Histogram(
    "vpn_http_request_seconds", "HTTP request latency by route template.", ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=REGISTRY
)
for _reason in FAILURE_REASONS:
    FAILURES.labels(_reason)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


# ----- calls from the service and the dispatcher (one line each) --------------------------------------


def config_delivered(session, now: datetime) -> None:
    seconds = _seconds(session.created_at, now)
    if seconds is not None:
        PROVISION_SECONDS.labels(session.provider, "config").observe(seconds)


def session_ready(session) -> None:
    seconds = _seconds(session.created_at, session.ready_at)
    if seconds is not None:
        PROVISION_SECONDS.labels(session.provider, "server_up").observe(seconds)


def failure_reason(exc: BaseException) -> str:
    """The closed-set label for why provisioning failed."""
    from bot.replies import DeliveryError
    from provisioner.base import ProvisionError

    if isinstance(exc, DeliveryError):
        return "delivery"
    if isinstance(exc, (TimeoutError,)):
        return "timeout"
    if isinstance(exc, ProvisionError):
        return "interrupted" if "restarted" in str(exc) else "provider"
    return "internal"


def session_failed(exc: BaseException) -> None:
    FAILURES.labels(failure_reason(exc)).inc()


def teardown_done(session) -> None:
    TEARDOWNS.labels(session.provider).inc()


def reconcile_deleted(provider: str, count: int = 1) -> None:
    if count:
        RECONCILE_DELETED.labels(provider).inc(count)


class Children:
    """A metric's children by label values, each looked up once: `.labels()` takes a lock and walks dicts
    (~1.5 us), more than a count or an observation costs. At most `bound` are kept (the label values of
    what uses it are a closed set; the bound is a belt), then they are looked up each time."""

    def __init__(self, metric: Any, bound: int) -> None:
        self._metric, self._bound = metric, bound
        self._known: dict[tuple[str, ...], Any] = {}

    def of(self, *labels: str) -> Any:
        child = self._known.get(labels)
        if child is None:
            child = self._metric.labels(*labels)
            if len(self._known) < self._bound:
                self._known[labels] = child
        return child


_CHAT_CHILDREN = Children(CHAT_MESSAGES, 256)
HTTP_CHILDREN = Children(HTTP_SECONDS, 4096)  # (route template, method, status): the app's own routes, a closed set of methods


def chat_message(channel: str, outcome: str) -> None:
    _CHAT_CHILDREN.of(channel[:32], outcome if outcome in CHAT_OUTCOMES else "handled").inc()
