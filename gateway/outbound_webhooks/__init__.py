"""Outbound webhooks: integrators subscribe to Parley's public events and get signed HTTP POSTs."""
