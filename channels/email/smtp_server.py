"""The built-in SMTP server (aiosmtpd): mail for the inboxes' addresses, straight into the intake.

Recipients are checked at RCPT time (550 for an address no inbox receives for), the size at DATA
(552 over the limit), and 250 is answered only once the message is committed: a crash or a
database outage before that answers 451 or drops the connection, and the sending server retries,
so an accepted message is never lost. A message that is not an email is refused with 550 and the
parser's reason. Put it behind the MX (port 25) directly or behind a relay; it does no SPF/DKIM
checks and no TLS itself, which a relay in front can do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 25 * 1024 * 1024
# RFC 5321 allows 1000 bytes a line; real mail (HTML from some clients) is longer. Postfix accepts
# such lines, so do we, up to this.
MAX_LINE_BYTES = 64 * 1024


class Outcome(Protocol):
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def rejected(self) -> bool: ...


class Intake(Protocol):
    """What the server hands mail to (`gateway.email_intake.EmailIntake`)."""

    async def find_inbox(self, address: str) -> Any: ...

    async def accept(
        self, raw: bytes, *, envelope_recipients: Sequence[str], inbox: Any, envelope_sender: str | None
    ) -> Outcome: ...


class _Smtp(SMTP):
    line_length_limit = MAX_LINE_BYTES


class InboxHandler:
    """aiosmtpd's handler: RCPT checks the address, DATA runs the intake for each inbox addressed."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        try:
            inbox = await self.intake.find_inbox(address)
        except Exception:  # the database being away: the sender must try again, not bounce
            logger.exception("SMTP: could not look up %s", address)
            return "451 4.3.0 Temporary failure looking up the recipient, try again later"
        if inbox is None:
            return f"550 5.1.1 <{_printable(address)}>: no inbox here receives mail for this address"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw or "").encode("utf-8", "surrogateescape")
        by_inbox: dict[Any, tuple[Any, list[str]]] = {}
        try:
            for address in envelope.rcpt_tos:
                inbox = await self.intake.find_inbox(address)
                if inbox is not None:
                    by_inbox.setdefault(inbox.id, (inbox, []))[1].append(address)
            if not by_inbox:
                return "554 5.1.1 None of the recipients is received here any more"
            outcomes: list[Outcome] = []
            for inbox, recipients in by_inbox.values():
                outcomes.append(
                    await self.intake.accept(
                        raw,
                        envelope_recipients=recipients,
                        inbox=inbox,
                        envelope_sender=envelope.mail_from,
                    )
                )
        except Exception:  # not committed: 451 makes the sender retry, so nothing is lost
            logger.exception("SMTP: storing a message from %s failed", envelope.mail_from)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        rejected = [o for o in outcomes if o.rejected]
        if rejected:
            return f"550 5.6.0 Message refused: {_printable(rejected[0].reason)}"
        summary = ", ".join(sorted({o.status for o in outcomes}))
        logger.info("SMTP: message from %s to %s: %s", envelope.mail_from, envelope.rcpt_tos, summary)
        return f"250 2.0.0 OK: {summary}"


def _printable(text: str) -> str:
    """One line of printable ASCII for an SMTP reply."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(text.split()))
    return cleaned[:400]


async def start_smtp_server(
    intake: Intake,
    *,
    host: str,
    port: int,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    hostname: str | None = None,
) -> asyncio.Server:
    """Listen for SMTP on `host:port` in the running loop; close the returned server to stop."""
    handler = InboxHandler(intake)
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        return _Smtp(
            handler,
            data_size_limit=max_message_bytes,
            enable_SMTPUTF8=True,
            hostname=hostname,
            ident="Parley ESMTP",
            loop=loop,
        )

    server = await loop.create_server(protocol, host=host, port=port)
    logger.info("SMTP server listening on %s:%s (messages up to %s bytes)", host, port, max_message_bytes)
    return server
