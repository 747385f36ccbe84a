"""Inboxes, conversations and messages; outbound delivery; (later) the agents' web UI."""
