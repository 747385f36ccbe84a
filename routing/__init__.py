"""Assignment, the waiting queue and SLA clocks (not built yet)."""
