"""Submit-time checks and resolution of the generation controls, against the model's family.

Runs in the API process before anything is fetched or queued (no torch, no diffusers): a control
the model cannot apply is a 400 naming the field; flags whose vendor default is "yes"
(`use_karras_sigmas`, `tomesd`) are resolved to what will actually be applied, so the job and its
`meta` say what the engine did. The prompt enhancements are applied here too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.core.request import RequestDraft
from diffserve.core.step_cache import OFF
from diffserve.engine.models.capabilities import SCHEDULERS, UNSUPPORTED_SCHEDULERS, family_controls
from diffserve.engine.controls.clip_skip import TEXT_ENCODERS, max_clip_skip
from diffserve.engine.identity.errors import NoFaceFound
from diffserve.engine.identity.faces import SubmitFaceCheck
from diffserve.engine.controls.prompts import enhance, style_name, styles
from diffserve.engine.identity.config import PULID_FOLDER

if TYPE_CHECKING:
    from diffserve.engine.models.registry import ModelEntry

SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


def resolve_controls(draft: RequestDraft, entry: ModelEntry) -> RequestDraft:
    """The draft with its controls checked against `entry` and resolved; raises InvalidInput."""
    controls = family_controls(entry.family)
    if draft.scheduler is not None:
        if not controls.schedulers:
            raise InvalidInput(
                f"scheduler is not supported by model {draft.model_id} ({entry.family} models run their "
                f"own scheduler); leave it out", field="scheduler")
        if draft.scheduler in UNSUPPORTED_SCHEDULERS:
            raise InvalidInput(
                f"scheduler {draft.scheduler} cannot run image-to-image: "
                f"{UNSUPPORTED_SCHEDULERS[draft.scheduler]}. Supported: {', '.join(SCHEDULERS)}",
                field="scheduler")
    scheduler = draft.scheduler or model_scheduler_name(entry)
    spec = SCHEDULERS.get(scheduler or "") if controls.schedulers else None
    if draft.algorithm_type is not None and not (spec and spec.algorithm):
        raise InvalidInput(
            f"algorithm_type applies only to DPMSolverMultistepScheduler and DPMSolverSinglestepScheduler "
            f"(the scheduler is {scheduler or 'the model default'})", field="algorithm_type")
    _check_mode(draft, entry, controls)
    if draft.extra_images and not controls.reference_images:
        raise InvalidInput(
            f"{draft.extra_images_field}: model {draft.model_id} ({entry.family} models) takes no reference "
            f"images besides the init image", field=draft.extra_images_field)
    if draft.tiling and not controls.tiling:
        raise InvalidInput(f"tiling is not supported by model {draft.model_id} ({entry.family} models): it needs "
                           f"a UNet model (sd, sdxl)", field="tiling")
    step_cache = draft.step_cache or entry.step_cache or OFF
    if step_cache.on and (draft.mode != "img2img" or draft.mask_image or draft.ip_adapter_id):
        if draft.step_cache is not None and draft.step_cache.on:  # asked for: say why not
            raise InvalidInput("step_cache applies to image-to-image without a mask or an IP-Adapter (it runs "
                               "in the batched loop)", field="step_cache")
        step_cache = OFF  # the model's default does not apply: meta says what runs
    if step_cache.on and step_cache.method != controls.step_cache:
        takes = f"it takes {controls.step_cache}" if controls.step_cache else "it has no step cache"
        raise InvalidInput(f"step_cache {step_cache.method} is not supported by model {draft.model_id} "
                           f"({entry.family} models: {takes})", field="step_cache")
    if draft.clip_skip is not None and draft.clip_skip > 1:
        _check_clip_skip(draft.clip_skip, draft.model_id, entry, controls.clip_skip_offset)
    style = style_name(draft.enhance_style)
    prompt, negative = enhance(draft.prompt, draft.negative_prompt,
                               enhance_prompt=draft.enhance_prompt, style=style)
    return draft.model_copy(update={
        "scheduler": scheduler,
        "use_karras_sigmas": bool(draft.use_karras_sigmas and spec and spec.karras),
        "tomesd": draft.tomesd and controls.tomesd,
        "step_cache": step_cache,
        "enhance_style": style,
        "prompt": prompt,
        "negative_prompt": negative,
    })


def _check_clip_skip(clip_skip: int, model_id: str, entry: ModelEntry, offset: int | None) -> None:
    if offset is None:
        raise InvalidInput(f"clip_skip is not supported by model {model_id} ({entry.family} models)",
                           field="clip_skip")
    layers = [n for name in TEXT_ENCODERS
              if isinstance(n := (component_config(entry, f"{name}/config.json") or {}).get("num_hidden_layers"), int)]
    if layers and clip_skip > (limit := max_clip_skip(min(layers), offset)):
        raise InvalidInput(f"clip_skip must be between 1 and {limit} for model {model_id} but is {clip_skip}",
                           field="clip_skip")


def model_scheduler_name(entry: ModelEntry) -> str | None:
    """The class name of the model's own scheduler, read from its config without loading anything.

    None when the config is not on this machine yet (a hub model not downloaded, a built-in model
    not built yet): the request then records no scheduler and the model's default runs.
    """
    name = (component_config(entry, SCHEDULER_CONFIG) or {}).get("_class_name")
    return name if isinstance(name, str) else None


def component_config(entry: ModelEntry, relative: str) -> dict | None:
    """One JSON config file of the model (e.g. `scheduler/scheduler_config.json`), if on this machine."""
    path: Path | None = None
    if entry.kind == "folder":
        path = Path(entry.location) / relative
    elif entry.kind == "single_file" and entry.config:
        path = Path(entry.config) / relative
    elif entry.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(entry.location, relative, revision=entry.revision)
        path = Path(cached) if isinstance(cached, str) else None
    try:
        data = json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_init_image(entry: ModelEntry, image: Image.Image, faces: SubmitFaceCheck) -> None:
    """Refuse at submit an init image the model cannot use (PuLID: no face to take the identity from),
    with the face detector the model's worker will use."""
    if not family_controls(entry.family).needs_face or entry.kind != "folder":
        return  # a PuLID model that is not a folder is refused when it loads, with the reason
    try:
        faces.require_face(Path(entry.location) / PULID_FOLDER, image, field_name="init_image")
    except NoFaceFound:
        raise InvalidInput("init_image: no face found in the input image (this model takes the identity "
                           "from its face)", field="init_image") from None
    except (OSError, ValueError):
        return  # an unreadable PuLID folder: the worker refuses the model with the reason when it loads


def _check_mode(draft: RequestDraft, entry: ModelEntry, controls) -> None:
    """Text to image and inpainting run on the families that have them (capabilities), with what they need."""
    family = f"{entry.family} models"
    if draft.mode == "txt2img" and not controls.txt2img:
        raise InvalidInput(f"model {draft.model_id} ({family}) cannot generate from text alone: it needs an init "
                           f"image", field="model_id")
    if draft.mode == "inpaint":
        if not controls.inpaint:
            raise InvalidInput(f"{draft.mask_field}: model {draft.model_id} ({family}) cannot inpaint",
                               field=draft.mask_field)
        if not draft.mask_image:
            raise InvalidInput(f"{draft.mask_field} is required for inpainting", field=draft.mask_field)
    if draft.mode != "txt2img" and not draft.init_image.strip():
        raise InvalidInput("init_image is required", field="init_image")


def style_presets() -> dict[str, tuple[str, str]]:
    """The style presets `enhance_style` names: name -> (prompt template holding {prompt}, negative terms)."""
    return styles()
