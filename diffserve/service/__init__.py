"""Submission: what every dialect calls to turn a request into a queued job (and the per-key cap)."""
