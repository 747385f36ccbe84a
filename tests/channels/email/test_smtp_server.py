"""The built-in SMTP server with real clients (swaks, smtplib): RCPT checks, size limit, duplicates,
refusals with reasons, a database outage answered 451, and `parley smtp` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from channels.email.smtp_server import start_smtp_server
from gateway.email_intake import EmailIntake
from inbox.models import Conversation, Message
from inbox.runtime import InboxDirectory
from parley.crypto import SecretBox
from parley.db import Database
from parley.media import MediaStore
from parley.migrate import upgrade
from tests.conftest import SECRET_KEY, eventually, free_port, make_tenant
from tests.support.smtp import make_email_inbox

FIXTURES = Path(__file__).parents[2] / "fixtures" / "email"
MAX_BYTES = 64 * 1024
REPO = Path(__file__).parents[3]


class CountingNotifier:
    def __init__(self) -> None:
        self.calls = 0

    def notify(self) -> None:
        self.calls += 1


@dataclass
class Server:
    port: int
    intake: EmailIntake
    db: Database
    notifier: CountingNotifier

    async def swaks(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["swaks", "--server", "127.0.0.1", "--port", str(self.port), "--timeout", "10", *args]
        return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)

    async def messages(self) -> int:
        async with self.db.sessionmaker() as session:
            return int((await session.execute(select(func.count()).select_from(Message))).scalar_one())


@pytest_asyncio.fixture
async def server(db: Database, tmp_path: Path) -> AsyncIterator[Server]:
    tenant = await make_tenant(db, "acme")
    await make_email_inbox(db, tenant.tenant_id, secret_key=SECRET_KEY)
    directory = InboxDirectory(db, SecretBox(SECRET_KEY))
    notifier = CountingNotifier()
    intake = EmailIntake(db, directory, MediaStore(tmp_path / "media", 1024 * 1024), notifier)
    port = free_port()
    smtp = await start_smtp_server(intake, host="127.0.0.1", port=port, max_message_bytes=MAX_BYTES)
    yield Server(port, intake, db, notifier)
    smtp.close()
    await smtp.wait_closed()
    await directory.close()


async def test_swaks_delivers_a_reply_from_gmail_into_a_new_conversation(server: Server) -> None:
    result = await server.swaks(
        "--to",
        "support@parley.test",
        "--from",
        "marco@gmail.example",
        "--data",
        f"@{FIXTURES / 'reply__gmail_quoted.eml'}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 OK: stored" in result.stdout
    async with server.db.sessionmaker() as session:
        message = (await session.execute(select(Message))).scalar_one()
    assert message.body == "The tracking link does not work for me."
    assert server.notifier.calls == 1


async def test_a_duplicate_delivery_is_accepted_and_stored_once(server: Server) -> None:
    fixture = f"@{FIXTURES / 'message__rfc2047_names.eml'}"
    for _ in range(2):
        result = await server.swaks("--to", "support@parley.test", "--data", fixture)
        assert result.returncode == 0, result.stdout
    assert "<-  250 2.0.0 OK: duplicate" in result.stdout
    assert await server.messages() == 1


async def test_an_unknown_recipient_is_refused_at_rcpt(server: Server) -> None:
    result = await server.swaks(
        "--to", "sales@parley.test", "--data", f"@{FIXTURES / 'message__rfc2047_names.eml'}"
    )
    assert result.returncode == 24  # swaks: no RCPTs accepted
    assert "550 5.1.1 <sales@parley.test>: no inbox here receives mail for this address" in result.stdout
    assert await server.messages() == 0


async def test_known_and_unknown_recipients_in_one_transaction(server: Server) -> None:
    def deliver() -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
            return smtp.sendmail(
                "ann@example.com",
                ["nobody@parley.test", "SUPPORT@parley.test", "support+anything@parley.test"],
                (FIXTURES / "message__rfc2047_names.eml").read_bytes(),
            )

    refused = await asyncio.to_thread(deliver)
    assert list(refused) == ["nobody@parley.test"] and refused["nobody@parley.test"][0] == 550
    assert await server.messages() == 1


async def test_an_oversized_message_is_refused_with_552(server: Server) -> None:
    result = await server.swaks(
        "--to",
        "support@parley.test",
        "--header",
        "Subject: big",
        "--body",
        "x" * 70 + ("\n" + "y" * 70) * 1000,
    )
    assert result.returncode != 0
    assert "552 Error: Too much mail data" in result.stdout
    assert await server.messages() == 0


async def test_bytes_that_are_not_an_email_are_refused_with_the_reason(server: Server) -> None:
    def deliver() -> None:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
            smtp.sendmail("ann@example.com", ["support@parley.test"], b"this is not\r\nan email at all\r\n")

    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(deliver)
    assert refused.value.smtp_code == 550
    assert b"does not start with a header field" in refused.value.smtp_error
    assert await server.messages() == 0


async def test_a_database_outage_answers_451_and_the_retry_is_stored(server: Server) -> None:
    fixture = f"@{FIXTURES / 'message__iso_2022_jp.eml'}"
    assert await server.intake.find_inbox("support@parley.test") is not None  # addresses cached
    working, server.intake.db = (
        server.intake.db,
        Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone"),
    )
    try:
        result = await server.swaks("--to", "support@parley.test", "--data", fixture)
    finally:
        await server.intake.db.dispose()
        server.intake.db = working
    assert "451 4.3.0 Temporary failure storing the message" in result.stdout
    assert await server.messages() == 0

    result = await server.swaks("--to", "support@parley.test", "--data", fixture)
    assert result.returncode == 0
    assert await server.messages() == 1


async def test_parley_smtp_runs_as_its_own_process(tmp_path: Path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}"
    db = Database(database_url)
    await upgrade(db.engine)
    tenant = await make_tenant(db, "acme")
    await make_email_inbox(db, tenant.tenant_id, secret_key=SECRET_KEY)
    port = free_port()
    env = {
        **os.environ,
        "PARLEY_DATABASE_URL": database_url,
        "PARLEY_SECRET_KEY": SECRET_KEY,
        "PARLEY_DATA_DIR": str(tmp_path),
        "PARLEY_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "parley", "smtp", "--port", str(port), "--max-message-bytes", "100000"),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(listening, timeout=30)
        command = ["swaks", "--server", "127.0.0.1", "--port", str(port), "--to", "support@parley.test"]
        command += ["--data", f"@{FIXTURES / 'message__8bit_headers.eml'}"]
        result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout

        async with db.sessionmaker() as session:
            conversation = (await session.execute(select(Conversation))).scalar_one()
        assert conversation.thread_key == "<8bit-0001@example.de>"
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
        await db.dispose()
    assert process.returncode == 0, output.decode()


async def test_lines_longer_than_rfc_5321_allows_are_accepted(server: Server) -> None:
    # Some clients send HTML in one long line; Postfix takes it, and so does Parley.
    body = "<p>" + "long line " * 3000 + "</p>"
    raw = f"From: ann@example.com\r\nSubject: long\r\nContent-Type: text/html\r\n\r\n{body}\r\n".encode()

    def deliver() -> None:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
            smtp.sendmail("ann@example.com", ["support@parley.test"], raw)

    await asyncio.to_thread(deliver)
    async with server.db.sessionmaker() as session:
        message = (await session.execute(select(Message))).scalar_one()
    assert message.body.startswith("long line long line") and len(message.body) > 29_000
