"""Routing: agents and teams, assignment strategies and the waiting queue (SLA clocks come later).

`match` decides (pure functions), `assigner` acts under row locks, `queue` reads positions and
estimates, `presence` says who can take a conversation now.
"""
