"""The management side, dialect-agnostic: queue and workers (server.py), models through the API (models.py)."""
