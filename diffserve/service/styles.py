"""The style presets, for the dialects that list them (A1111's /prompt-styles): the engine's torch-free
request rules hold them (engine/controls/style_presets.json)."""

from diffserve.engine.request_rules import style_presets

__all__ = ["style_presets"]
