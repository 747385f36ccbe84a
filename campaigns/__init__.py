"""Broadcasts and drips to consenting segments (not built yet)."""
