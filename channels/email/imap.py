"""Polling an existing mailbox over IMAP (aioimaplib): new mail in, through the same intake as SMTP.

An email inbox polls when its settings have an `imap` object (see `ImapConfig.from_settings`;
the password is the inbox secret `imap_password`). Each poll selects the folder, asks for the UIDs
above the last one handled, fetches each message with BODY.PEEK[] (so nothing is marked read before
it is stored), hands the raw bytes to the intake, and only then marks it \\Seen or moves it to the
processed folder, and records the UID. A crash anywhere in between means the message is fetched
again next time, and the intake's dedupe on Message-ID makes that harmless: nothing is lost.

Where the poller got to (UIDVALIDITY and the last UID) is kept by a `StateStore`: the gateway's
keeps it in the inbox's settings under `imap_state` (`gateway.imap_polling`). When that state is
missing or the server's UIDVALIDITY changed (the folder was recreated), the poller takes the UNSEEN
messages among those in the folder at that moment (a batch per poll), then every new UID, read or
not; messages it had already stored are duplicates by Message-ID and are only marked.

A message the intake rejects (not an email, too large) is flagged, moved to `failed_folder` when one
is configured, logged, and never fetched again. A message whose intake keeps failing for another
reason (a bug, not a database outage) is given up on the same way after `MAX_ATTEMPTS` polls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aioimaplib
from sqlalchemy.exc import DBAPIError

from channels.base import ConfigurationError, MalformedPayload
from channels.common import optional_str, required_str

logger = logging.getLogger(__name__)

Security = Literal["tls", "starttls", "none"]
SECURITY_PORTS: Mapping[Security, int] = {"tls": 993, "starttls": 143, "none": 143}
STATE_KEY = "imap_state"
PASSWORD_SECRET = "imap_password"  # noqa: S105 - the secret's name, not a secret
DEFAULT_POLL_INTERVAL = 60.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 25 * 1024 * 1024
# Messages handled per poll: a mailbox with years of unread mail is worked through in slices.
BATCH_SIZE = 100
MAX_ATTEMPTS = 3
# Keyword set on a message Parley gave up on, beside \Flagged, so a person can find them.
REJECTED_KEYWORD = "$ParleyRejected"

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")


class ImapError(Exception):
    """The IMAP server failed us (refused login, dropped the connection, answered NO/BAD)."""


@dataclass(frozen=True, slots=True)
class ImapConfig:
    """How to reach and work through one inbox's mailbox."""

    host: str
    username: str
    password: str = field(repr=False)
    port: int = 993
    security: Security = "tls"
    folder: str = "INBOX"
    # Stored messages are moved here; without one they are marked \Seen where they are.
    processed_folder: str | None = None
    # Rejected messages are moved here (and always flagged).
    failed_folder: str | None = None
    poll_interval: float = DEFAULT_POLL_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # PEM of a CA (or the server's self-signed certificate) to trust instead of the system's.
    ca_certificate: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], secrets: Mapping[str, str]) -> ImapConfig | None:
        """The inbox's IMAP config, None if it does not poll; `ConfigurationError` names a bad field."""
        imap, cleaned_secrets = clean_imap_settings(settings, secrets)
        if imap is None:
            return None
        return cls(password=cleaned_secrets[PASSWORD_SECRET], **imap)

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_certificate) if self.ca_certificate else None
        return context or ssl.create_default_context()


def clean_imap_settings(
    settings: Mapping[str, Any], secrets: Mapping[str, str]
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """Check an email inbox's `imap` settings and `imap_password`: (cleaned `imap`, cleaned secrets).

    For the email channel's `validate_config`: (None, {}) when the inbox does not poll IMAP.
    """
    raw = settings.get("imap")
    if raw is None:
        return None, {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError("imap must be an object")
    cleaned: dict[str, Any] = {"host": required_str(raw, "host"), "username": required_str(raw, "username")}
    security = optional_str(raw, "security") or "tls"
    default_port = SECURITY_PORTS.get(security)  # type: ignore[call-overload]  # checking the str
    if default_port is None:
        raise ConfigurationError("imap.security must be one of tls, starttls, none")
    cleaned["security"] = security
    port = raw.get("port", default_port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError("imap.port must be a port number")
    cleaned["port"] = port
    for key in ("folder", "processed_folder", "failed_folder"):
        try:
            value = optional_str(raw, key)
        except ConfigurationError:
            raise ConfigurationError(f"imap.{key} must be a string") from None
        if value is not None:
            if any(c in value for c in "\r\n\0") or len(value) > 200:
                raise ConfigurationError(f"imap.{key} is not a usable folder name")
            cleaned[key] = value
    cleaned.setdefault("folder", "INBOX")
    if cleaned["folder"] in (cleaned.get("processed_folder"), cleaned.get("failed_folder")):
        raise ConfigurationError("imap.processed_folder and imap.failed_folder must differ from imap.folder")
    for key, default, low, high in (
        ("poll_interval", DEFAULT_POLL_INTERVAL, 1, 86400),
        ("timeout", DEFAULT_TIMEOUT, 1, 300),
        ("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES, 1024, 1024**3),
    ):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise ConfigurationError(f"imap.{key} must be a number between {low} and {high}")
        cleaned[key] = int(value) if key == "max_message_bytes" else float(value)
    ca = optional_str(raw, "ca_certificate")
    if ca is not None:
        try:
            ssl.create_default_context(cadata=ca)
        except (ssl.SSLError, ValueError) as e:
            raise ConfigurationError(f"imap.ca_certificate is not a PEM certificate: {e}") from None
        cleaned["ca_certificate"] = ca
    password = secrets.get(PASSWORD_SECRET)
    if not isinstance(password, str) or not password:
        raise ConfigurationError(f"{PASSWORD_SECRET} is required when imap is set")
    return cleaned, {PASSWORD_SECRET: password}


@dataclass(frozen=True, slots=True)
class ImapState:
    """Where polling a folder got to: UIDs are only comparable under the same UIDVALIDITY."""

    folder: str
    uidvalidity: int
    last_uid: int
    # Set while working through the mail that was in the folder when polling (re)started, a batch
    # at a time: of the UIDs up to this one only unseen messages are taken.
    unseen_until: int | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ImapState | None:
        raw = settings.get(STATE_KEY)
        if not isinstance(raw, Mapping):
            return None
        folder, uidvalidity, last_uid = raw.get("folder"), raw.get("uidvalidity"), raw.get("last_uid")
        if not isinstance(folder, str) or not isinstance(uidvalidity, int) or not isinstance(last_uid, int):
            return None
        unseen_until = raw.get("unseen_until")
        return cls(folder, uidvalidity, last_uid, unseen_until if isinstance(unseen_until, int) else None)

    def to_settings(self) -> dict[str, Any]:
        """The state as kept under `STATE_KEY` in the inbox's settings."""
        return {
            "folder": self.folder,
            "uidvalidity": self.uidvalidity,
            "last_uid": self.last_uid,
            "unseen_until": self.unseen_until,
        }


@dataclass(frozen=True, slots=True)
class Accepted:
    """The intake stored the message, or found it already stored."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """The intake refused the message for good (`reason` is logged and kept on the IMAP side)."""

    reason: str


# What the poller hands each message to: raw bytes in, accepted or rejected out. A database error
# stops the poll (the message is fetched again next time); `MalformedPayload` is a rejection.
Intake = Callable[[bytes], Awaitable[Accepted | Rejected]]


@dataclass(slots=True)
class PollResult:
    accepted: int = 0
    rejected: int = 0
    uidvalidity: int | None = None
    last_uid: int | None = None


class StateStore(Protocol):
    """Where the poller keeps its place (the gateway keeps it in the inbox's settings)."""

    async def load(self) -> ImapState | None: ...

    async def save(self, state: ImapState) -> None: ...


def encode_mailbox(name: str) -> str:
    """A folder name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    encoded = "".join(out)
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapSession:
    """One logged-in connection, with the few commands the poller needs, failures as `ImapError`."""

    def __init__(self, config: ImapConfig) -> None:
        self.config = config
        self._client: aioimaplib.IMAP4 | None = None

    async def __aenter__(self) -> ImapSession:
        try:
            await self.connect()
        except BaseException:
            await self.logout()  # a refused login still holds a connection
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.logout()

    async def connect(self) -> None:
        config = self.config
        try:
            if config.security == "tls":
                client = aioimaplib.IMAP4_SSL(
                    config.host, config.port, timeout=config.timeout, ssl_context=config.ssl_context()
                )
            else:
                client = aioimaplib.IMAP4(config.host, config.port, timeout=config.timeout)
            self._client = client
            await client.wait_hello_from_server()
            if config.security == "starttls":
                await self._starttls(client)
            response = await client.login(config.username, config.password)
        except (OSError, TimeoutError, aioimaplib.AioImapException, ssl.SSLError) as e:
            raise ImapError(f"cannot connect to {config.host}:{config.port}: {e!r}") from e
        if response.result != "OK":
            raise ImapError(f"login refused for {config.username}: {_text(response.lines)}")

    async def _starttls(self, client: aioimaplib.IMAP4) -> None:
        # aioimaplib has no STARTTLS: issue the command through its protocol, then upgrade the
        # transport in place and ask again for the capabilities, as RFC 3501 6.2.1 requires.
        protocol = client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError(f"{self.config.host} does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await asyncio.wait_for(protocol.execute(command), self.config.timeout)
        if response.result != "OK":
            raise ImapError(f"STARTTLS refused: {_text(response.lines)}")
        loop = asyncio.get_running_loop()
        protocol.transport = await loop.start_tls(
            protocol.transport, protocol, self.config.ssl_context(), server_hostname=self.config.host
        )
        await asyncio.wait_for(protocol.capability(), self.config.timeout)

    async def logout(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await client.logout()
        except (OSError, TimeoutError, aioimaplib.AioImapException):
            pass  # the server went first; nothing left to close politely
        finally:
            transport = client.protocol.transport
            if transport is not None:
                transport.close()

    @property
    def client(self) -> aioimaplib.IMAP4:
        if self._client is None:
            raise ImapError("not connected")
        return self._client

    async def _checked(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            response = await call
        except (OSError, TimeoutError, aioimaplib.AioImapException) as e:
            raise ImapError(f"{what} failed: {e!r}") from e
        if response.result != "OK":
            raise ImapError(f"{what} answered {response.result}: {_text(response.lines)}")
        return response

    async def select(self, folder: str) -> tuple[int, int | None]:
        """Select the folder; its UIDVALIDITY and UIDNEXT (when the server says)."""
        response = await self._checked(f"SELECT {folder}", self.client.select(encode_mailbox(folder)))
        uidvalidity = uidnext = None
        for line in response.lines:
            if isinstance(line, bytes | bytearray):
                if match := _UIDVALIDITY.search(bytes(line)):
                    uidvalidity = int(match.group(1))
                if match := _UIDNEXT.search(bytes(line)):
                    uidnext = int(match.group(1))
        if uidvalidity is None:
            raise ImapError(f"SELECT {folder} did not report UIDVALIDITY")
        return uidvalidity, uidnext

    async def search(self, *criteria: str) -> list[int]:
        response = await self._checked("UID SEARCH", self.client.uid_search(*criteria, charset=None))
        uids: list[int] = []
        for line in response.lines[:-1]:
            uids.extend(int(token) for token in bytes(line).split() if token.isdigit())
        return sorted(set(uids))

    async def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each message, to refuse oversized mail without downloading it."""
        response = await self._checked(
            "UID FETCH sizes", self.client.uid("fetch", _uid_set(uids), "(UID RFC822.SIZE)")
        )
        sizes: dict[int, int] = {}
        for line in response.lines:
            if isinstance(line, bytes):
                uid, size = _FETCH_UID.search(line), _FETCH_SIZE.search(line)
                if uid and size:
                    sizes[int(uid.group(1))] = int(size.group(1))
        return sizes

    async def fetch(self, uid: int) -> bytes | None:
        """The raw message, None if it is gone (expunged by someone else meanwhile)."""
        response = await self._checked(
            f"UID FETCH {uid}", self.client.uid("fetch", str(uid), "(BODY.PEEK[])")
        )
        lines = response.lines
        for i, line in enumerate(lines[:-1]):
            if isinstance(line, bytes) and _LITERAL.search(line) and i + 1 < len(lines):
                return bytes(lines[i + 1])
        return None

    async def mark_seen(self, uid: int) -> None:
        await self._checked("UID STORE", self.client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Seen)"))

    async def flag_rejected(self, uid: int) -> None:
        flags = rf"(\Flagged {REJECTED_KEYWORD})"
        try:
            await self._checked("UID STORE", self.client.uid("store", str(uid), "+FLAGS.SILENT", flags))
        except ImapError:
            # Servers without user keywords (PERMANENTFLAGS lacking \*) still take \Flagged.
            await self._checked(
                "UID STORE", self.client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Flagged)")
            )

    async def move(self, uid: int, folder: str) -> None:
        """Move the message, creating the folder on first use; COPY + expunge without MOVE."""
        mailbox = encode_mailbox(folder)
        try:
            await self._move(uid, mailbox)
        except ImapError as first:
            try:
                created = await self.client.create(mailbox)
            except (OSError, TimeoutError, aioimaplib.AioImapException) as e:
                raise ImapError(f"CREATE {folder} failed: {e!r}") from first
            if created.result != "OK":
                raise first
            await self._move(uid, mailbox)

    async def _move(self, uid: int, mailbox: str) -> None:
        client = self.client
        if client.has_capability("MOVE"):
            await self._checked("UID MOVE", client.uid("move", str(uid), mailbox))
            return
        await self._checked("UID COPY", client.uid("copy", str(uid), mailbox))
        await self._checked("UID STORE", client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Deleted)"))
        if client.has_capability("UIDPLUS"):
            await self._checked("UID EXPUNGE", client.uid("expunge", str(uid)))
        else:
            await self._checked("EXPUNGE", client.expunge())


class ImapPoller:
    """Polls one inbox's mailbox: `poll_once` for one pass, `run` to keep polling with backoff."""

    def __init__(
        self,
        config: ImapConfig,
        intake: Intake,
        state: StateStore,
        *,
        name: str = "imap",
        max_backoff: float = 300.0,
    ) -> None:
        self.config = config
        self.intake = intake
        self.state = state
        self.name = name
        self.max_backoff = max_backoff
        # Failed intake attempts per (uidvalidity, uid), kept across polls of this process.
        self._attempts: dict[tuple[int, int], int] = {}

    async def poll_once(self) -> PollResult:
        """Connect, take in what is new, disconnect; `ImapError` if the server fails us."""
        config = self.config
        result = PollResult()
        async with ImapSession(config) as session:
            uidvalidity, uidnext = await session.select(config.folder)
            result.uidvalidity = uidvalidity
            state = await self.state.load()
            if state is None or state.folder != config.folder or state.uidvalidity != uidvalidity:
                if state is not None:
                    logger.info(
                        "%s: %s UIDVALIDITY is %s (was %s in %s): taking its unseen mail",
                        self.name,
                        config.folder,
                        uidvalidity,
                        state.uidvalidity,
                        state.folder,
                    )
                # What is in the folder now is taken if unseen; what arrives later, read or not.
                until = uidnext - 1 if uidnext is not None else max(await session.search("ALL"), default=0)
                state = ImapState(config.folder, uidvalidity, 0, until)
                stored = None
            else:
                stored = state
            last_uid, horizon = state.last_uid, state.unseen_until
            if horizon is not None:
                # IMAP ranges are unordered (5:3 is 3:5): search only while there is a range.
                found = (
                    await session.search("UNSEEN", "UID", f"{last_uid + 1}:{horizon}")
                    if last_uid < horizon
                    else []
                )
                uids = [uid for uid in found if last_uid < uid <= horizon]
            else:
                uids = [uid for uid in await session.search("UID", f"{last_uid + 1}:*") if uid > last_uid]
            batch = uids[:BATCH_SIZE]
            sizes = await session.sizes(batch) if batch else {}
            for uid in batch:
                outcome = await self._take(session, uidvalidity, uid, sizes.get(uid))
                if outcome is None:
                    break  # transient failure: this and later messages wait for the next poll
                if isinstance(outcome, Rejected):
                    result.rejected += 1
                    await session.flag_rejected(uid)
                    if config.failed_folder:
                        await session.move(uid, config.failed_folder)
                else:
                    result.accepted += 1
                    if config.processed_folder:
                        await session.move(uid, config.processed_folder)
                    else:
                        await session.mark_seen(uid)
                last_uid = max(last_uid, uid)
                stored = ImapState(config.folder, uidvalidity, last_uid, horizon)
                await self.state.save(stored)
            else:
                if horizon is not None and len(uids) <= BATCH_SIZE:
                    # The unseen mail that was there is all taken: from now on, every new UID.
                    last_uid, horizon = max(last_uid, horizon), None
                final = ImapState(config.folder, uidvalidity, last_uid, horizon)
                if final != stored:
                    await self.state.save(final)
            result.last_uid = last_uid
        return result

    async def _take(
        self, session: ImapSession, uidvalidity: int, uid: int, size: int | None
    ) -> Accepted | Rejected | None:
        """Hand one message to the intake: its outcome, or None to leave it for the next poll."""
        limit = self.config.max_message_bytes
        if size is not None and size > limit:
            reason = f"message of {size} bytes is over the {limit}-byte limit"
            logger.warning("%s: UID %s rejected: %s", self.name, uid, reason)
            return Rejected(reason)
        raw = await session.fetch(uid)
        if raw is None:
            logger.info("%s: UID %s vanished before it was fetched", self.name, uid)
            return Accepted()  # nothing to take in: skip it
        key = (uidvalidity, uid)
        try:
            outcome = await self.intake(raw)
        except MalformedPayload as e:
            outcome = Rejected(str(e))
        except (DBAPIError, OSError, TimeoutError):
            raise  # the database is away: stop polling, back off, fetch this message again later
        except Exception:  # counted below: a bug must not block the mailbox forever
            attempts = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempts
            if attempts < MAX_ATTEMPTS:
                logger.warning(
                    "%s: UID %s could not be stored (attempt %s of %s); retrying next poll",
                    self.name,
                    uid,
                    attempts,
                    MAX_ATTEMPTS,
                    exc_info=True,
                )
                return None
            logger.error(
                "%s: UID %s failed %s times; giving up on it", self.name, uid, attempts, exc_info=True
            )
            outcome = Rejected(f"failed {attempts} times")
        self._attempts.pop(key, None)
        if isinstance(outcome, Rejected):
            logger.warning("%s: UID %s rejected: %s", self.name, uid, outcome.reason)
        return outcome

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll every `poll_interval` until `stop` is set; errors back off exponentially, with jitter."""
        stop = stop or asyncio.Event()
        failures = 0
        while not stop.is_set():
            try:
                result = await self.poll_once()
            except Exception as e:  # whatever failed, the mailbox is polled again after a pause
                failures += 1
                delay = min(self.max_backoff, self.config.poll_interval * 2 ** min(failures - 1, 10))
                delay *= random.uniform(0.5, 1.0)
                expected = isinstance(e, ImapError | DBAPIError | OSError | TimeoutError)
                logger.warning(
                    "%s: poll failed (%s in a row), next try in %.0fs: %s",
                    self.name,
                    failures,
                    delay,
                    e,
                    exc_info=not expected,  # a traceback only for what is not a server or database outage
                )
            else:
                failures = 0
                delay = self.config.poll_interval
                if result.accepted or result.rejected:
                    logger.info("%s: %s stored, %s rejected", self.name, result.accepted, result.rejected)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


def _uid_set(uids: Sequence[int]) -> str:
    return ",".join(str(uid) for uid in uids)


def _text(lines: Sequence[Any]) -> str:
    return " ".join(
        bytes(line).decode("utf-8", "replace") for line in lines if isinstance(line, bytes | bytearray)
    )
