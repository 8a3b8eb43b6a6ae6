"""A1111's `/sdapi/v1/options`: every key a client writes is kept, per API key (store/key_options.py), and read
back by GET over A1111's defaults for the ones diffserve knows.

Acted on: `sd_model_checkpoint` (the model when a request names none), `CLIP_stop_at_last_layers` (clip_skip:
the same convention, 1 = the last layer), `sd_vae` (a registry VAE id; Automatic or None: the model's own) and
`eta_noise_seed_delta` (as A1111: the noise ancestral and SDE samplers add between steps comes from seed + i +
delta, the initial noise from seed + i; the infotext says `ENSD: n` for the samplers A1111 writes it for).
Kept and read back, not acted on: `send_seed` and the other UI options. `override_settings` of a request counts
over the stored options, as in A1111.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from diffserve.api.a1111.option_effects import NO_VAE
from diffserve.api.a1111.router import A1111Route, _key
from diffserve.api.body import read_json_object
from diffserve.api.state import AppState
from diffserve.core.errors import InvalidInput
from diffserve.store.keys import ApiKey

router = APIRouter(prefix="/sdapi/v1", route_class=A1111Route, tags=["AUTOMATIC1111"])

MAX_OPTIONS = 1000  # A1111 has about 400
MAX_OPTIONS_BYTES = 256 * 1024  # one key's options, as JSON
OPTIONS_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": True, "properties": {
        "sd_model_checkpoint": {"type": "string", "description": "a registry id"},
        "CLIP_stop_at_last_layers": {"type": "integer", "minimum": 1, "maximum": 12},
        "eta_noise_seed_delta": {"type": "integer", "minimum": 0},
        "send_seed": {"type": "boolean"}}}}}}}


def defaults(ds: AppState) -> dict[str, Any]:
    """A1111's defaults for the options diffserve knows."""
    return {"sd_model_checkpoint": ds.settings.engine.default_model, "sd_checkpoint_hash": None, "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0, "send_seed": True, "send_size": True,
            "samples_format": "png", "upscaler_for_img2img": None, "sd_checkpoints_limit": 1}


def _check(ds: AppState, name: str, value: Any) -> None:
    """A 400 naming the option when a value diffserve acts on is of the wrong type or out of range."""
    if name == "sd_model_checkpoint":
        if not isinstance(value, str):
            raise InvalidInput("sd_model_checkpoint must be a model id", field=name)
        ds.registry.get(value)  # ModelNotFound names it
    elif name in ("CLIP_stop_at_last_layers", "eta_noise_seed_delta"):
        low, high = (1, 12) if name == "CLIP_stop_at_last_layers" else (0, 2**32 - 1)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInput(f"{name} must be a whole number from {low} to {high}", field=name)
    elif name == "sd_vae" and value not in NO_VAE:
        if not isinstance(value, str):
            raise InvalidInput("sd_vae must be a VAE id (see /sdapi/v1/sd-vae) or Automatic", field=name)
        if not any(vae_id == value for vae_id, _ in ds.registry.entries("vaes")):
            raise InvalidInput(f"sd_vae: no VAE {value[:100]!r} in the registry (see /sdapi/v1/sd-vae)", field=name)
    elif isinstance(defaults(ds).get(name), bool) and not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", field=name)


async def stored(ds: AppState, key: ApiKey) -> dict[str, Any]:
    return await ds.offload(ds.key_options.get, key.key_id)


@router.get("/options", summary="This key's options (every key written, over A1111's defaults)")
async def get_options(request: Request) -> dict[str, Any]:
    ds, key = await _key(request)
    return {**defaults(ds), **await stored(ds, key)}


@router.post("/options", openapi_extra=OPTIONS_BODY_DOC, summary="Set this key's options (every key is kept)")
async def set_options(request: Request) -> Any:
    ds, key = await _key(request)
    body = await read_json_object(request, max_bytes=MAX_OPTIONS_BYTES)
    for name, value in body.items():
        _check(ds, name, value)

    def update() -> None:
        merged = {**ds.key_options.get(key.key_id), **body}
        if len(merged) > MAX_OPTIONS:
            raise InvalidInput(f"at most {MAX_OPTIONS} options are kept per key", field=next(iter(body), None))
        if len(json.dumps(merged)) > MAX_OPTIONS_BYTES:
            raise InvalidInput(f"one key's options may hold at most {MAX_OPTIONS_BYTES} bytes of JSON",
                               field=next(iter(body), None))
        ds.key_options.update(key.key_id, body)

    await ds.offload(update)
    return None
