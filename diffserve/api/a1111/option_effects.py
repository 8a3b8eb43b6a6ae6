"""What a key's A1111 options change in a request (the options themselves: api/a1111/options.py)."""

from __future__ import annotations

from typing import Any

from diffserve.core.errors import InvalidInput


NO_VAE = (None, "", "Automatic", "None")  # A1111: the checkpoint's own VAE


def acted_on(options: dict[str, Any], override_settings: dict[str, Any]) -> dict[str, Any]:
    """The draft fields the options set (override_settings first): clip_skip from CLIP_stop_at_last_layers,
    eta_noise_seed_delta as it is, vae from sd_vae (a registry VAE id; the registry checks it and its family when
    the job is submitted)."""
    fields: dict[str, Any] = {}
    layers = override_settings.get("CLIP_stop_at_last_layers", options.get("CLIP_stop_at_last_layers"))
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)):
        raise InvalidInput("CLIP_stop_at_last_layers must be a whole number", field="CLIP_stop_at_last_layers")
    if layers is not None and layers > 1:
        fields["clip_skip"] = layers
    delta = override_settings.get("eta_noise_seed_delta", options.get("eta_noise_seed_delta"))
    if delta is not None and (isinstance(delta, bool) or not isinstance(delta, int)):
        raise InvalidInput("eta_noise_seed_delta must be a whole number", field="eta_noise_seed_delta")
    if delta:  # the engine draws the samplers' between-step noise from seed + delta (engine/controls/eta_noise.py)
        fields["eta_noise_seed_delta"] = delta
    vae = override_settings.get("sd_vae", options.get("sd_vae"))
    if vae not in NO_VAE:
        if not isinstance(vae, str):
            raise InvalidInput("sd_vae must be a VAE id (see /sdapi/v1/sd-vae) or Automatic", field="sd_vae")
        fields["vae"] = vae
    return fields
