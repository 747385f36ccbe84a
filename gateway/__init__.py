"""HTTP ingress: provider webhooks, the inbound pipeline, the REST API and the app factory."""
