"""Parley: the application shell (settings, database, outbox, auth, CLI)."""

__version__ = "0.1.0"
