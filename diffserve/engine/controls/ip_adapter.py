"""IP-Adapter per request: `ip_adapter_id` (an id from the registry; the vendor's five are built
in), `ip_adapter_image` (fetched and stored at submit), `ip_adapter_scale` (default 0.6).

For the call, diffusers' own `load_ip_adapter` puts the adapter's image projection and attention
processors into the pipeline's denoiser, and `set_ip_adapter_scale` sets its weight; the image
goes to the pipeline as `ip_adapter_image`. On exit `unload_ip_adapter` takes them out again and
the denoiser gets back the very attention processors it had, so the next request runs the base
model unchanged. The CLIP image encoder (the large part) is loaded once and kept in the
pipeline's state; the adapter weights themselves (tens of MB) are read at each use.
Family-agnostic: any pipeline with diffusers' IPAdapterMixin (SD 1.x/2.x, SDXL) takes it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.asset_entries import IpAdapterEntry
from diffserve.engine.models.asset_files import asset_root, inside
from diffserve.engine.models.loading import _PASS_THROUGH, _reason

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs

FIELD = "ip_adapter_id"
DEFAULT_SCALE = 0.6  # the vendor's meta default
MAX_ENCODERS = 1  # image encoders kept per pipeline (ViT-H is ~1.2 GB in fp16)
_STATE = "ip_image_encoders"


@contextmanager
def use_ip_adapter(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    req = inputs.request
    if not req.ip_adapter_id:
        yield
        return
    if inputs.ip_adapter_image is None:
        raise InvalidInput("ip_adapter_image is required with ip_adapter_id", field="ip_adapter_image")
    entry: IpAdapterEntry = ctx.registry.asset("ip_adapters", req.ip_adapter_id)
    if entry.family != ctx.entry.family:
        raise InvalidInput(f"{FIELD}: IP-Adapter {req.ip_adapter_id} is for {entry.family} models; "
                           f"{ctx.model_id} is a model of the {ctx.entry.family} family", field=FIELD)
    denoiser = getattr(pipe, "unet", None)
    if denoiser is None:
        denoiser = getattr(pipe, "transformer", None)
    if not hasattr(pipe, "load_ip_adapter") or not hasattr(pipe, "image_encoder") or denoiser is None:
        raise InvalidInput(f"{FIELD}: model {ctx.model_id} does not take an IP-Adapter", field=FIELD)

    root, encoder_path = _files(entry, req.ip_adapter_id)
    encoder = _image_encoder(pipe, ctx, encoder_path, req.ip_adapter_id)
    processors = dict(denoiser.attn_processors)
    feature_extractor = getattr(pipe, "feature_extractor", None)
    try:
        pipe.register_modules(image_encoder=encoder)  # so load_ip_adapter does not load it again
        try:
            pipe.load_ip_adapter(str(root), subfolder=entry.subfolder or "", weight_name=entry.weight_name,
                                 image_encoder_folder=None, local_files_only=True)
        except _PASS_THROUGH:
            raise
        except Exception as exc:  # noqa: BLE001 - an adapter that does not fit is the request's problem
            raise InvalidInput(f"{FIELD}: could not load IP-Adapter {req.ip_adapter_id}: {_reason(exc)}",
                               field=FIELD) from exc
        pipe.set_ip_adapter_scale(DEFAULT_SCALE if req.ip_adapter_scale is None else req.ip_adapter_scale)
        inputs.call_kwargs["ip_adapter_image"] = inputs.ip_adapter_image
        yield
    finally:
        inputs.call_kwargs.pop("ip_adapter_image", None)
        try:
            pipe.unload_ip_adapter()
        finally:
            denoiser.set_attn_processor(dict(processors))  # the very processors it had (set_ consumes the dict)
            pipe.register_modules(image_encoder=None)
            if hasattr(pipe, "feature_extractor"):
                pipe.register_modules(feature_extractor=feature_extractor)


def _files(entry: IpAdapterEntry, ip_id: str) -> tuple[Path, Path]:
    """(adapter root, image encoder folder) on this machine."""
    weights = inside(entry.subfolder, entry.weight_name)
    encoder_is_absolute = Path(entry.image_encoder).is_absolute()
    needs = [weights] + ([] if encoder_is_absolute else [inside(entry.image_encoder, "config.json")])
    patterns = [weights] + ([] if encoder_is_absolute else [inside(entry.image_encoder, "config.json"),
                                                             inside(entry.image_encoder, "*.safetensors")])
    root = asset_root(entry, field=FIELD, name=f"IP-Adapter {ip_id}", needs=needs, patterns=patterns)
    encoder = Path(entry.image_encoder) if encoder_is_absolute else root / entry.image_encoder
    if not (encoder / "config.json").is_file():
        raise InvalidInput(f"{FIELD}: image encoder {encoder} of IP-Adapter {ip_id} has no config.json", field=FIELD)
    return root, encoder


def _image_encoder(pipe: Any, ctx: ControlContext, folder: Path, ip_id: str) -> Any:
    """The CLIP image encoder at `folder`, loaded once per pipeline (in the pipeline's dtype, on its device)."""
    cache: OrderedDict[str, Any] = ctx.state.setdefault(_STATE, OrderedDict())
    key = str(folder.resolve())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    while len(cache) >= MAX_ENCODERS:
        cache.popitem(last=False)
    from transformers import CLIPVisionModelWithProjection

    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(folder), dtype=pipe.dtype, local_files_only=True)
    except _PASS_THROUGH:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"{FIELD}: could not load the image encoder of IP-Adapter {ip_id}: {_reason(exc)}",
                           field=FIELD) from exc
    cache[key] = encoder.to(pipe.device).eval()
    return cache[key]
