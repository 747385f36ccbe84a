"""The Rasa bot layer (triage, lead capture, handoff); conversations skip it while no Rasa is set."""
