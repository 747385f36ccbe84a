"""The REST API, /api/v1 (being built)."""

from __future__ import annotations

from aiohttp import web


def setup_api(app: web.Application) -> None:
    """Register the API routes."""
