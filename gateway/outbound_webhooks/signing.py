"""The `Parley-Signature` header: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (Stripe's scheme).

Receivers recompute the HMAC with their subscription's secret over the timestamp, a dot and the
raw body, compare in constant time, and refuse old timestamps (replays). `verify` is that check,
as the README shows it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SIGNATURE_HEADER = "Parley-Signature"
EVENT_HEADER = "Parley-Event"
DELIVERY_HEADER = "Parley-Delivery"
TOLERANCE = 300


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, *, now: float | None = None, tolerance: int = TOLERANCE
) -> bool:
    """True if `header` signs `body` with `secret` and its timestamp is within `tolerance` seconds."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).partition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))
