"""Settings read from `PARLEY_*` environment variables, once, by whoever builds the app."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Outbound webhooks: where they may go and how hard Parley tries (README "Outbound webhooks")."""

    # http:// targets (else https only) and private, loopback or link-local addresses (SSRF guard).
    allow_http: bool = False
    allow_private_targets: bool = False
    timeout: float = 10.0
    # Retries: exponential from `retry_base` seconds, capped, with jitter; `max_attempts` per delivery.
    retry_base: float = 30.0
    retry_cap: float = 4 * 3600.0
    max_attempts: int = 15
    # A subscription is disabled after this many failed attempts in a row spanning at least this long.
    disable_after: int = 15
    disable_after_seconds: float = 24 * 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings:
        def flag(name: str) -> bool:
            return env.get(name, "").lower() in ("1", "true", "yes")

        return cls(
            allow_http=flag("PARLEY_WEBHOOKS_ALLOW_HTTP"),
            allow_private_targets=flag("PARLEY_WEBHOOKS_ALLOW_PRIVATE"),
            timeout=float(env.get("PARLEY_WEBHOOKS_TIMEOUT", "10")),
            # The outbox gives up an event after 15 claims: more attempts would never be made.
            max_attempts=min(int(env.get("PARLEY_WEBHOOKS_MAX_ATTEMPTS", "15")), 15),
            disable_after=int(env.get("PARLEY_WEBHOOKS_DISABLE_AFTER", "15")),
        )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything Parley reads from its environment."""

    database_url: str
    data_dir: Path
    secret_key: str
    redis_url: str | None = None
    rasa_url: str | None = None
    public_url: str | None = None
    log_level: str = "INFO"
    database_pool_size: int = 20
    # Attachments customers and agents exchange; None means `<data_dir>/media`.
    media_dir: Path | None = None
    media_max_bytes: int = 25 * 1024 * 1024
    # Parley's own mail (password resets, transcripts, mention notices): smtp[s]://user:pass@host:port.
    # Unset: the message is written to the log instead, which is enough for a single-user trial.
    smtp_url: str | None = None
    mail_from: str = "Parley <parley@localhost>"
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `PARLEY_*` variables, with embedded defaults for the rest."""
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("PARLEY_DATA_DIR") or Path.cwd()).resolve()
        database_url = env.get("PARLEY_DATABASE_URL") or f"sqlite:///{data_dir / 'parley.db'}"
        secret_key = env.get("PARLEY_SECRET_KEY") or _local_secret_key(data_dir)
        public_url = env.get("PARLEY_PUBLIC_URL") or None
        return cls(
            database_url=normalise_database_url(database_url),
            data_dir=data_dir,
            secret_key=secret_key,
            redis_url=env.get("PARLEY_REDIS_URL") or None,
            rasa_url=env.get("PARLEY_RASA_URL") or None,
            public_url=public_url.rstrip("/") if public_url else None,
            log_level=env.get("PARLEY_LOG_LEVEL", "INFO").upper(),
            database_pool_size=int(env.get("PARLEY_DATABASE_POOL_SIZE", "20")),
            media_dir=Path(env["PARLEY_MEDIA_DIR"]).resolve() if env.get("PARLEY_MEDIA_DIR") else None,
            media_max_bytes=int(env.get("PARLEY_MEDIA_MAX_BYTES", str(25 * 1024 * 1024))),
            smtp_url=env.get("PARLEY_SMTP_URL") or None,
            mail_from=env.get("PARLEY_MAIL_FROM") or "Parley <parley@localhost>",
            webhooks=WebhookSettings.from_env(env),
        )

    @property
    def media_root(self) -> Path:
        return self.media_dir or self.data_dir / "media"

    def with_public_url(self, url: str) -> Settings:
        """A copy whose public URL is `url` unless one was configured."""
        return self if self.public_url else replace(self, public_url=url.rstrip("/"))


def normalise_database_url(url: str) -> str:
    """Pick the async driver for a plain `postgresql://` or `sqlite://` URL."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def _local_secret_key(data_dir: Path) -> str:
    """The embedded default keeps a generated key beside its database, so restarts can decrypt."""
    path = data_dir / "parley-secret.key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key
