"""The `parley` command. Like the Celery app, it is a composition root: `serve` and `worker`
import the gateway lazily, so the `parley` package itself depends on nothing above it."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from parley.auth import create_tenant_admin, issue_token, normalise_email
from parley.db import Database
from parley.migrate import upgrade
from parley.models import Role, User
from parley.settings import Settings

T = TypeVar("T")


def _run(fn: Callable[[Database], Awaitable[T]], settings: Settings) -> T:
    async def main() -> T:
        db = Database(settings.database_url)
        try:
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    # python-telegram-bot logs request URLs, which carry the bot token, at DEBUG.
    logging.getLogger("telegram").setLevel(max(logging.INFO, logging.getLevelName(settings.log_level)))


@click.group()
@click.version_option(package_name="parley")
def main() -> None:
    """Parley: omnichannel messaging hub. Configured by PARLEY_* environment variables."""


@main.command()
def migrate() -> None:
    """Create the database or bring it to the newest schema."""
    settings = Settings.from_env()
    _run(lambda db: upgrade(db.engine), settings)
    click.echo(f"database at the newest schema ({settings.database_url.split('@')[-1]})")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--smtp-port", type=int, default=None, help="Also receive email over SMTP on this port.")
@click.option(
    "--max-message-bytes", default=25 * 1024 * 1024, show_default=True, type=int, help="SMTP size limit."
)
@click.option("--imap", is_flag=True, help="Also poll the email inboxes' IMAP mailboxes (see `parley imap`).")
def serve(host: str, port: int, smtp_port: int | None, max_message_bytes: int, imap: bool) -> None:
    """Run the gateway (webhooks, API, optionally SMTP); migrates the database first."""
    from aiohttp import web

    from gateway.app import create_app

    settings = Settings.from_env()
    _logging(settings)
    _run(lambda db: upgrade(db.engine), settings)
    if settings.public_url is None:
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - comparing, not binding
        settings = settings.with_public_url(f"http://{local}:{port}")
        logging.getLogger("parley").warning(
            "PARLEY_PUBLIC_URL is not set: providers will be told to call back %s", settings.public_url
        )
    loop: Any = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # uvloop is optional (not on Windows)
        pass
    app = create_app(settings)
    if smtp_port is not None:
        from gateway.email_intake import smtp_context

        app.cleanup_ctx.append(smtp_context(host=host, port=smtp_port, max_message_bytes=max_message_bytes))
    if imap:
        from gateway.imap_polling import imap_context

        app.cleanup_ctx.append(imap_context())
    # Everything imported and built so far lives as long as the process: keep it out of the
    # collector's scans, and collect the young generation less often. Full collections over
    # SQLAlchemy's and aiohttp's long-lived objects were most of the webhook latency tail.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    web.run_app(app, host=host, port=port, loop=loop, access_log=None, print=click.echo)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=2525, show_default=True, type=int, help="Port to listen on (25 behind an MX)."
)
@click.option(
    "--max-message-bytes", default=25 * 1024 * 1024, show_default=True, type=int, help="Larger mail gets 552."
)
@click.option("--hostname", default=None, help="The name the server greets with (default: this host's).")
def smtp(host: str, port: int, max_message_bytes: int, hostname: str | None) -> None:
    """Receive email for the email inboxes' addresses over SMTP; migrates the database first."""
    import signal

    from gateway.email_intake import serve_smtp

    settings = Settings.from_env()
    _logging(settings)
    _run(lambda db: upgrade(db.engine), settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        click.echo(f"receiving email on {host}:{port}")
        await serve_smtp(
            settings, host=host, port=port, max_message_bytes=max_message_bytes, hostname=hostname, stop=stop
        )

    asyncio.run(main())


@main.command()
@click.option("--once", is_flag=True, help="Poll every mailbox once and exit (for cron).")
@click.option(
    "--rescan", default=60.0, show_default=True, type=float, help="Seconds between looks for changed inboxes."
)
def imap(once: bool, rescan: float) -> None:
    """Poll the mailboxes of email inboxes with IMAP settings; migrates the database first."""
    import signal

    from gateway.imap_polling import serve_imap

    settings = Settings.from_env()
    _logging(settings)
    _run(lambda db: upgrade(db.engine), settings)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if not once:
            click.echo("polling the email inboxes' IMAP mailboxes")
        results = await serve_imap(settings, once=once, rescan=rescan, stop=stop)
        for inbox_id, result in sorted(results.items()):
            if isinstance(result, Exception):
                click.echo(f"inbox {inbox_id}: failed: {result}", err=True)
            else:
                click.echo(f"inbox {inbox_id}: {result.accepted} stored, {result.rejected} rejected")
        return sum(isinstance(r, Exception) for r in results.values())

    failures = asyncio.run(main())
    if failures:
        raise SystemExit(1)


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", default=4, show_default=True, type=int, help="Worker processes.")
@click.option("--beat/--no-beat", default=False, help="Also run the scheduler (one per deployment).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int, beat: bool, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker that dispatches outbox events (needs PARLEY_REDIS_URL)."""
    from parley.tasks import celery_app

    settings = Settings.from_env()
    if not settings.redis_url:
        raise click.UsageError("PARLEY_REDIS_URL is not set; `parley serve` dispatches in-process without it")
    argv = ["worker", "--loglevel", settings.log_level, "--concurrency", str(concurrency)]
    if beat:
        argv.append("--beat")
    celery_app(settings.redis_url).worker_main([*argv, *celery_args])


@main.command()
def beat() -> None:
    """Run the Celery beat scheduler on its own (the outbox sweep); one per deployment."""
    from parley.tasks import celery_app

    settings = Settings.from_env()
    if not settings.redis_url:
        raise click.UsageError("PARLEY_REDIS_URL is not set")
    celery_app(settings.redis_url).start(["beat", "--loglevel", settings.log_level])


@main.group()
def admin() -> None:
    """Manage tenants and their administrators."""


@admin.command("create")
@click.option("--email", required=True, help="The administrator's email (their sign-in).")
@click.option("--password", required=True, help="At least 8 characters.")
@click.option(
    "--tenant", "tenant_name", default="default", show_default=True, help="Tenant to create or join."
)
@click.option(
    "--role", type=click.Choice([r.value for r in Role]), default=Role.ADMIN.value, show_default=True
)
def admin_create(email: str, password: str, tenant_name: str, role: str) -> None:
    """Create a tenant (unless it exists) and a user in it, an admin by default."""
    settings = Settings.from_env()

    async def create(db: Database) -> User:
        await upgrade(db.engine)
        async with db.transaction() as session:
            return await create_tenant_admin(
                session, email=email, password=password, tenant_name=tenant_name, role=Role(role)
            )

    try:
        user = _run(create, settings)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(
        f"created {user.role} {user.email} (user {user.id}) in tenant {tenant_name!r} ({user.tenant_id})"
    )


@main.group()
def token() -> None:
    """Manage API tokens."""


@token.command("create")
@click.option("--email", required=True, help="The user the token acts as (and whose role it carries).")
@click.option("--name", default="cli", show_default=True, help="A label to recognise the token by.")
def token_create(email: str, name: str) -> None:
    """Print a new API token for a user. It is shown once; only its hash is stored."""
    from sqlalchemy import select

    settings = Settings.from_env()

    async def create(db: Database) -> str | None:
        async with db.transaction() as session:
            user = (
                await session.execute(select(User).where(User.email == normalise_email(email)))
            ).scalar_one_or_none()
            return None if user is None else await issue_token(session, user, name=name)

    value = _run(create, settings)
    if value is None:
        raise click.ClickException(f"no user with email {email}")
    click.echo(value)
