"""Signed one-click unsubscribe tokens (RFC 8058): who may opt out of what, without logging in.

A token is `<payload>.<signature>`: the payload is URL-safe base64 of compact JSON naming the
tenant, contact, channel and purpose and when the token expires; the signature an HMAC-SHA256
over the payload with a key derived from `PARLEY_SECRET_KEY` (never the raw key, which also
seals provider secrets). A token only ever withdraws consent, so one that leaks lets nobody do
more than unsubscribe that person.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

UNSUBSCRIBE_PATH = "/u/"
# Mail sits in inboxes for a long time, and an unsubscribe link must still work when it is read.
TOKEN_LIFETIME_SECONDS = 400 * 24 * 3600


class InvalidToken(ValueError):
    """The token is malformed, forged or expired."""


@dataclass(frozen=True, slots=True)
class UnsubscribeGrant:
    tenant_id: int
    contact_id: int
    channel: str
    purpose: str
    expires_at: int


class UnsubscribeSigner:
    """Makes and checks unsubscribe tokens with a key derived from the secret key."""

    def __init__(self, secret_key: str) -> None:
        self._key = hashlib.sha256(b"parley/unsubscribe/v1\x00" + secret_key.encode()).digest()

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def token(
        self,
        *,
        tenant_id: int,
        contact_id: int,
        channel: str,
        purpose: str,
        now: float | None = None,
        lifetime: int = TOKEN_LIFETIME_SECONDS,
    ) -> str:
        """A token that lets its bearer withdraw this contact's consent for the channel and purpose."""
        expires = int((time.time() if now is None else now) + lifetime)
        body = {"t": tenant_id, "c": contact_id, "ch": channel, "p": purpose, "x": expires}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload.encode())}"

    def verify(self, token: str, *, now: float | None = None) -> UnsubscribeGrant:
        """The grant a token carries; `InvalidToken` if it was not made with this key or has expired."""
        payload, dot, signature = token.partition(".")
        if not dot or len(token) > 1000:
            raise InvalidToken("malformed token")
        if not hmac.compare_digest(self._sign(payload.encode()), signature):
            raise InvalidToken("bad signature")
        try:
            body = json.loads(_unb64(payload))
            grant = UnsubscribeGrant(
                tenant_id=int(body["t"]),
                contact_id=int(body["c"]),
                channel=str(body["ch"]),
                purpose=str(body["p"]),
                expires_at=int(body["x"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise InvalidToken("malformed token") from e
        if grant.expires_at < (time.time() if now is None else now):
            raise InvalidToken("expired token")
        return grant


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
