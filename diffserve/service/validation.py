"""One validation entry: a dialect's draft becomes the GenerationRequest a job runs, every check in one order.

`validate(draft, registry, settings, inputs)` runs these steps, in this order, and stops at the first refusal
(InvalidInput naming the dialect's field, quoting the bad value like diffusers' `check_inputs`:
"height must be divisible by 8 but is 1001"; ModelNotFound for an unknown model):

 1. text: every text field bounded (`limits.max_prompt_chars`, `max_text_chars`) and valid Unicode -- first, so
    no later message echoes a huge or unprintable value
 2. reference count: the images besides the init image (`limits.max_reference_images`), before any is fetched
 3. model: the registry's entry and its limits (a dialect's own size cap, `max_side`, below the model's)
 4. ranges: samples, steps, guidance, strength, sizes (range and multiple), seed, clip_skip, scheduler names...
 5. model rules: LoRA / embedding / VAE / IP-Adapter ids exist and are of the model's family
 6. controls: what the model's family can apply (scheduler, algorithm_type, mode, references, tiling,
    clip_skip), resolved (karras, tomesd, prompt enhancement)
 7. webhook URL: the network rules of image URLs (no private address, the host resolves) -- before any fetch
 8. init image: fetched and decoded (sizes checked before decoding), the model's needs (PuLID: a face), the
    output size it gives
 9. batch pixels: samples x width x height (`limits.max_batch_pixels`)
10. other images: mask, reference images, IP-Adapter image, fetched and decoded
    -> the GenerationRequest: defaults filled in, seed chosen, each input image's storage key named

Steps 1-5 need no I/O: `check_draft` runs them alone (before the per-key queue cap, and for a dialect that works
on its images before submitting, as A1111 resizes its init image). Steps 6-10 do I/O (model configs, DNS,
image fetches) and run off the event loop. Each input image is handed to `Inputs.keep` (the service stores it)
once the steps up to it passed -- the init image after step 9 -- so at most one decoded image is held at a
time; the service removes what was kept if a later step refuses the request. Steps 6-10 are written once
(`_steps`, which yields each I/O it needs); `validate` awaits each, `validate_blocking` runs them all on one thread
for a draft whose images are all inline (no URL to fetch): one thread hop instead of one per I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass

from PIL import Image

from diffserve.config import Settings
from diffserve.core.errors import ImageInputError, InvalidInput
from diffserve.core.job import input_key
from diffserve.core.offload import Offload
from diffserve.core.request import (GenerationRequest, ModelLimits, RequestDraft, check_batch_pixels,
                                    check_reference_count, output_size)
from diffserve.engine.identity.faces import SubmitFaceCheck
from diffserve.engine.models.registry import ModelEntry, ModelRegistry
from diffserve.engine.request_rules import check_init_image, resolve_controls
from diffserve.media.fetch import UrlPolicy

LoadImage = Callable[[str, str], Awaitable[Image.Image]]  # (value sent, the dialect's field name) -> decoded
ImageCheck = Callable[[Image.Image], None]  # blocking; raises InvalidInput


@dataclass(frozen=True)
class InputImage:
    """A decoded input image and the storage key the request names for it (stored as a PNG of `size`;
    None: as sent)."""

    key: str
    image: Image.Image
    size: tuple[int, int] | None


@dataclass(frozen=True)
class Inputs:
    """How validation reaches the outside: `load` fetches or decodes one image (the service's bounded fetch
    slots), `keep` stores one that passed, `offload` runs blocking checks off the event loop, `faces` is
    PuLID's face check, `token` names the job's input objects. `load_checked`, if given, is `load` that also
    runs a check of the decoded image in the same call off the loop (one thread hop instead of two)."""

    load: LoadImage
    keep: Callable[[InputImage], Awaitable[None]]
    offload: Offload
    faces: SubmitFaceCheck
    token: str
    load_checked: Callable[[str, str, ImageCheck], Awaitable[Image.Image]] | None = None

    async def load_and_check(self, value: str, field: str, check: ImageCheck) -> Image.Image:
        if self.load_checked is not None:
            return await self.load_checked(value, field, check)
        image = await self.load(value, field)
        await self.offload(check, image)
        return image


def check_draft(draft: RequestDraft, registry: ModelRegistry, settings: Settings) -> ModelLimits:
    """Steps 1-5 (no I/O, cheap); the model's limits as they apply to this draft."""
    limits = settings.limits
    draft.check_lengths(limits.max_prompt_chars, limits.max_text_chars)  # 1
    check_reference_count(draft, limits.max_reference_images)  # 2
    model = registry.get(draft.model_id).limits  # 3
    if draft.max_side and draft.max_side < model.max_size:  # the dialect's cap (realtime: 1024...)
        model = model.model_copy(update={"max_size": draft.max_side})
    draft.check(model)  # 4
    registry.check_request(draft)  # 5
    return model


async def validate(draft: RequestDraft, registry: ModelRegistry, settings: Settings,
                   inputs: Inputs, *, checked: ModelLimits | None = None) -> GenerationRequest:
    """Every step of the module's list, in its order: the request the job will run (its input images kept).
    `checked`: what `check_draft` returned for this same draft (its steps 1-5 ran already: not again)."""
    model = check_draft(draft, registry, settings) if checked is None else checked  # 1-5
    steps = _steps(draft, registry.get(draft.model_id), model, settings, inputs.token, inputs.faces)
    answer: object = None
    while True:
        try:
            need = steps.send(answer)
        except StopIteration as done:
            return done.value
        if isinstance(need, _Call):
            answer = await inputs.offload(need.fn, *need.args)
        elif isinstance(need, _Load):
            answer = await (inputs.load(need.value, need.field) if need.check is None
                            else inputs.load_and_check(need.value, need.field, need.check))
        else:
            answer = await inputs.keep(need.image)


@dataclass(frozen=True)
class BlockingInputs:
    """Inputs for `validate_blocking`: `load` decodes one image sent inline (base64, data URI), `keep` stores
    one that passed -- both blocking, called on the thread that runs the validation."""

    load: Callable[[str, str], Image.Image]
    keep: Callable[[InputImage], None]
    faces: SubmitFaceCheck
    token: str


def inline_images(draft: RequestDraft, inline: Callable[[str], bool]) -> bool:
    """Every image `validate` would load is sent inline (`inline(value)`): nothing to fetch from a URL."""
    values = [*([draft.init_image] if draft.mode != "txt2img" else []),
              *([draft.mask_image] if draft.mode == "inpaint" and draft.mask_image else []),
              *draft.extra_images, *([draft.ip_adapter_image] if draft.ip_adapter_image else [])]
    return all(inline(value) for value in values)


def validate_blocking(draft: RequestDraft, entry: ModelEntry, model: ModelLimits, settings: Settings,
                      inputs: BlockingInputs) -> GenerationRequest:
    """Steps 6-10 of `validate` (the same steps, in the same order), blocking, for a draft whose images are all
    sent inline (`inline_images`): no URL fetch that would hold the thread, so they run in one call off the
    event loop instead of one thread hop each. `entry`, `model`: the registry's entry and what `check_draft`
    returned for this draft (steps 1-5, on the event loop)."""
    steps = _steps(draft, entry, model, settings, inputs.token, inputs.faces)
    answer: object = None
    while True:
        try:
            need = steps.send(answer)
        except StopIteration as done:
            return done.value
        if isinstance(need, _Call):
            answer = need.fn(*need.args)
        elif isinstance(need, _Load):
            answer = inputs.load(need.value, need.field)
            if need.check is not None:
                need.check(answer)
        else:
            answer = inputs.keep(need.image)


# What the steps ask of whoever runs them (`validate` off the loop, `validate_blocking` on its own thread):
@dataclass(frozen=True)
class _Call:  # blocking work; answered with its result
    fn: Callable[..., object]
    args: tuple


@dataclass(frozen=True)
class _Load:  # one input image, decoded (and `check`ed); answered with the image
    value: str
    field: str
    check: ImageCheck | None = None


@dataclass(frozen=True)
class _Keep:  # store an input image that passed
    image: InputImage


def _steps(draft: RequestDraft, entry: ModelEntry, model: ModelLimits, settings: Settings, token: str,
           faces: SubmitFaceCheck) -> Generator[_Call | _Load | _Keep, object, GenerationRequest]:
    """Steps 6-10, written once: each I/O is yielded to the runner, which sends back its answer."""
    draft = yield _Call(_controls_and_webhook, (draft, entry, settings))  # 6, 7: one call off the loop
    init: InputImage | None = None
    if draft.mode == "txt2img":  # 8: no init image: the size asked for, else the model's default
        default_width, default_height = model.default_size()
        width, height = draft.width or default_width, draft.height or default_height
    else:
        image = yield _Load(draft.init_image, draft.init_image_field,
                            lambda img: check_init_image(entry, img, faces))  # PuLID: a face
        width, height = output_size(image.width, image.height, draft.width, draft.height, model)
        init = InputImage(input_key(token, temp=draft.temp), image, (width, height))
    check_batch_pixels(draft.samples or 1, width, height, settings.limits.max_batch_pixels)  # 9
    if init is not None:
        yield _Keep(init)
    mask_key = None  # 10
    if draft.mode == "inpaint" and draft.mask_image:
        mask_key = input_key(token, "mask", temp=draft.temp)
        mask = yield _Load(draft.mask_image, draft.mask_field)
        yield _Keep(InputImage(mask_key, mask.convert("L"), (width, height)))
    extra_keys = []
    for i, ref in enumerate(draft.extra_images):
        extra_keys.append(input_key(token, f"ref{i}", temp=draft.temp))
        yield _Keep(InputImage(extra_keys[-1], (yield _Load(ref, draft.extra_images_field)), None))
    ip_key = None
    if draft.ip_adapter_image:
        ip_key = input_key(token, "ip", temp=draft.temp)
        yield _Keep(InputImage(ip_key, (yield _Load(draft.ip_adapter_image, "ip_adapter_image")), None))
    seed = draft.seed if draft.seed is not None else secrets.randbelow(2**32)
    return draft.resolve(model, init_image_key=init.key if init else "", width=width, height=height, seed=seed,
                         extra_image_keys=extra_keys, ip_adapter_image_key=ip_key, mask_image_key=mask_key)


def _controls_and_webhook(draft: RequestDraft, entry: ModelEntry, settings: Settings) -> RequestDraft:
    """Steps 6 (reads the model's config files) and 7 (DNS), blocking."""
    resolved = resolve_controls(draft, entry)  # 6
    if resolved.webhook:  # 7
        check_webhook_url(resolved.webhook, UrlPolicy(allow_private=settings.allow_private_urls))
    return resolved


def check_webhook_url(url: str, policy: UrlPolicy) -> None:
    """Step 7: the webhook URL under the network rules of image URLs; InvalidInput names `webhook`. Blocking
    (DNS)."""
    unresolvable = InvalidInput("webhook host cannot be resolved", field="webhook")
    try:
        target = policy.check(url, field="webhook")
    except ImageInputError as e:
        if getattr(e, "reason", None):  # resolution failed: fetch's error wording is about images
            raise unresolvable from None
        raise InvalidInput(e.message, field="webhook") from None
    if target.address is None:  # private URLs allowed: the policy did not resolve; a typo still fails here
        try:
            if not policy.resolver(target.host, target.port):
                raise unresolvable
        except (OSError, UnicodeError):
            raise unresolvable from None
