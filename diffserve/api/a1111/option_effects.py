"""What a key's A1111 options change in a request (the options themselves: api/a1111/options.py)."""

from __future__ import annotations

from typing import Any

from diffserve.core.errors import InvalidInput


def acted_on(options: dict[str, Any], override_settings: dict[str, Any]) -> dict[str, Any]:
    """The draft fields the options set: clip_skip from CLIP_stop_at_last_layers (override_settings first)."""
    layers = override_settings.get("CLIP_stop_at_last_layers", options.get("CLIP_stop_at_last_layers"))
    if isinstance(layers, bool) or not isinstance(layers, int):
        if layers is not None:
            raise InvalidInput("CLIP_stop_at_last_layers must be a whole number", field="CLIP_stop_at_last_layers")
        return {}
    return {"clip_skip": layers} if layers > 1 else {}
