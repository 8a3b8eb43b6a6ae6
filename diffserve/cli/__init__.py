"""The `diffserve` command: serve, keys, models."""
