"""OpenAI's images API (edits, generations) on diffserve's models."""
