"""One module per provider: verify and parse webhooks into normalised events, send messages."""
