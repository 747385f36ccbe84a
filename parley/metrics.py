"""Prometheus metrics shared by the gateway and the workers."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

WEBHOOKS = Counter(
    "parley_webhooks_total", "Provider webhooks by channel and outcome", ["channel", "outcome"]
)
INBOUND_MESSAGES = Counter("parley_inbound_messages_total", "Inbound messages stored", ["channel"])
IMAP_MESSAGES = Counter(
    "parley_imap_messages_total", "Messages taken from IMAP mailboxes, by intake outcome", ["outcome"]
)
MESSAGES_SENT = Counter(
    "parley_outbound_messages_total", "Outbound send attempts by outcome", ["channel", "outcome"]
)
HTTP_LATENCY = Histogram(
    "parley_http_request_seconds",
    "HTTP request latency by route",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
