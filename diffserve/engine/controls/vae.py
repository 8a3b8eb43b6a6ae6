"""A custom VAE per request: `vae` (an id from the registry).

The VAE is loaded once per pipeline with the pipeline's own VAE class (AutoencoderKL for SD, SDXL
and Flux) through diffusers' loaders, kept in the pipeline's state, and swapped in for the call;
the pipeline's own VAE is put back on exit. The base model is never reloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.asset_entries import VaeEntry
from diffserve.engine.models.asset_files import asset_root, inside
from diffserve.engine.models.loading import _PASS_THROUGH, _reason

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs

FIELD = "vae"
MAX_CACHED = 2  # VAEs kept per pipeline
_STATE = "vaes"


@dataclass
class _Vae:
    entry: VaeEntry
    module: Any


@contextmanager
def use_vae(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    vae_id = inputs.request.vae
    if not vae_id:
        yield
        return
    original = getattr(pipe, "vae", None)
    if original is None:
        raise InvalidInput(f"{FIELD}: model {ctx.model_id} has no VAE to replace", field=FIELD)
    custom = _loaded(ctx, vae_id, original)
    try:
        pipe.vae = custom
        yield
    finally:
        pipe.vae = original


def _loaded(ctx: ControlContext, vae_id: str, original: Any) -> Any:
    entry = ctx.registry.asset("vaes", vae_id)
    cache: OrderedDict[str, _Vae] = ctx.state.setdefault(_STATE, OrderedDict())
    known = cache.get(vae_id)
    if known is not None and known.entry == entry:
        cache.move_to_end(vae_id)
        return known.module
    cache.pop(vae_id, None)
    while len(cache) >= MAX_CACHED:
        cache.popitem(last=False)
    module = _load(entry, vae_id, original)
    cache[vae_id] = _Vae(entry, module)
    return module


def _load(entry: VaeEntry, vae_id: str, original: Any) -> Any:
    vae_class = type(original)
    config_file = inside(entry.subfolder, "config.json")
    root = asset_root(entry, field=FIELD, name=f"VAE {vae_id}", needs=[config_file],
                      patterns=[config_file, inside(entry.subfolder, "*.safetensors"),
                                inside(entry.subfolder, "*.bin")])
    try:
        if entry.kind == "file":
            module = vae_class.from_single_file(str(root), **_single_file_config(entry), torch_dtype=original.dtype)
        else:
            module = vae_class.from_pretrained(str(root), subfolder=entry.subfolder, torch_dtype=original.dtype,
                                               local_files_only=True)
    except _PASS_THROUGH:
        raise
    except Exception as exc:  # noqa: BLE001 - a VAE that does not load is the request's problem
        hint = " (give the entry a local config folder holding the VAE's config.json)" if (
            entry.kind == "file" and entry.config is None) else ""
        raise InvalidInput(f"{FIELD}: could not load VAE {vae_id}: {_reason(exc)}{hint}", field=FIELD) from exc
    _check_fits(module, original, vae_id)
    return module.to(original.device).eval()


def _single_file_config(entry: VaeEntry) -> dict[str, Any]:
    """from_single_file's config arguments: a VAE config folder, or a pipeline folder with vae/ in it."""
    if entry.config is None:
        return {}  # diffusers infers the architecture; it fetches the config from the hub unless cached
    folder = Path(entry.config)
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        return {"config": str(folder), "subfolder": "vae", "local_files_only": True}
    return {"config": str(folder), "local_files_only": True}


def _check_fits(module: Any, original: Any, vae_id: str) -> None:
    """The custom VAE must make latents of the pipeline's shape (channels and downsampling)."""
    mine, theirs = module.config, original.config
    if (mine.get("latent_channels"), len(mine.get("block_out_channels", ()))) != (
            theirs.get("latent_channels"), len(theirs.get("block_out_channels", ()))):
        raise InvalidInput(
            f"{FIELD}: VAE {vae_id} does not fit this model: it makes {mine.get('latent_channels')}-channel latents "
            f"at 1/{2 ** (len(mine.get('block_out_channels', ())) - 1)} scale, the model uses "
            f"{theirs.get('latent_channels')} channels at 1/{2 ** (len(theirs.get('block_out_channels', ())) - 1)}",
            field=FIELD)
