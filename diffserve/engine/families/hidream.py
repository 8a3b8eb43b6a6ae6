"""HiDream-I1 image-to-image, built on diffusers' text-to-image HiDreamImagePipeline.

diffusers has no HiDream img2img pipeline, so this family drives the stock text-to-image call
with the two things img2img needs, prepared from the pipeline's own components:

1. A schedule that starts at the strength's point: the pipeline's scheduler, copied, whose
   `set_timesteps` computes the full schedule for `steps` and then drops the first
   `int(steps - steps * strength)` steps (timesteps and sigmas alike; the start index
   FluxImg2ImgPipeline's `get_timesteps` computes), so the stock denoising loop runs only the rest. Any
   scheduler the pipeline accepts works this way (HiDream-I1-Full's flow UniPC, Dev/Fast's
   flow-matching Euler/LCM, or one a request switched to).
2. Latents noised to that point: the init image encoded by the pipeline's VAE (latent mode,
   then its shift and scaling factors), mixed with seeded noise by the flow-matching forward
   process (`scheduler.scale_noise`, or `add_noise` for schedulers that only have that):
   x_t = sigma_t * noise + (1 - sigma_t) * x_0.

The noise is drawn exactly as the pipeline's `prepare_latents` draws it (same generators, shape
and dtype), so at strength 1.0 the latents are the pipeline's own starting noise plus (1 - sigma_max)
of the init image: with flow-matching Euler (sigma_max = 1) the result is the pipeline's
text-to-image image byte for byte; with flow UniPC (sigma_max = 0.9997) it differs by about one
level of 255.

Size: HiDream's transformer handles at most `max_seq` latent patches (4096: 1024 x 1024 px for
HiDream-I1), and HiDreamImagePipeline rescales every request to that area, keeping its aspect
ratio. The family keeps that behaviour and the engine decides the output size: the init image is
encoded at the pipeline's working size, and the images come back resized (Lanczos) to the
requested width x height. A request whose area is the working area, with sides that are multiples
of 16 (1024 x 1024 on HiDream-I1, 64 x 64 on tiny-hidream), is generated at exactly its size.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch
from PIL import Image

from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.checks import require_pipeline

HIDREAM_PIPELINES = ("HiDreamImagePipeline",)


class HiDreamFamily:
    name = "hidream"

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        pipe = load_img2img_pipeline(source, device=device, dtype=dtype, as_img2img=False)
        return require_pipeline(pipe, self.name, HIDREAM_PIPELINES, source)

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        req = inputs.request
        width, height = working_size(pipe, req.width, req.height)
        start = steps_skipped(req.steps, req.strength)
        view = type(pipe)(**{**pipe.components, "scheduler": scheduler_starting_at(pipe.scheduler, start)})
        view.set_progress_bar_config(disable=True)
        # The pipeline rescales requests to the area (default_sample_size x vae_scale_factor)^2: make
        # that the transformer's working area (the stock 128 for HiDream-I1; smaller for tiny models).
        view.default_sample_size = math.sqrt(working_area(pipe)) / pipe.vae_scale_factor
        latents = noised_latents(view, inputs.init_image, width, height, req.steps, inputs.generators)
        out = view(
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt or None,
            height=height,
            width=width,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            num_images_per_prompt=req.samples,
            generator=inputs.generators,
            latents=latents,
            output_type="pil",
            **inputs.call_kwargs,
        )
        return [img if img.size == (req.width, req.height)
                else img.resize((req.width, req.height), Image.Resampling.LANCZOS) for img in out.images]


def steps_skipped(steps: int, strength: float) -> int:
    """Steps of the full schedule that img2img skips (FluxImg2ImgPipeline.get_timesteps' rule)."""
    return int(max(steps - min(steps * strength, steps), 0))


def working_area(pipe: Any) -> float:
    """Pixels (w x h) the transformer generates at most: `max_seq` patches of (patch x VAE factor)^2 px."""
    side = pipe.transformer.config.patch_size * pipe.vae_scale_factor
    return float(pipe.transformer.max_seq * side * side)


def working_size(pipe: Any, width: int, height: int) -> tuple[int, int]:
    """The size HiDreamImagePipeline generates for a width x height request once its default
    sample size gives `working_area`: the same area, the request's aspect ratio, sides rounded
    down to multiples of 2 x the VAE factor (the pipeline's own rule, from its __call__)."""
    division = pipe.vae_scale_factor * 2
    scale = math.sqrt(working_area(pipe) / (width * height))
    return int(width * scale // division * division), int(height * scale // division * division)


@torch.no_grad()
def noised_latents(pipe: Any, image: Image.Image, width: int, height: int, steps: int,
                   generators: list[torch.Generator]) -> torch.Tensor:
    """The init image's latents noised to the first timestep of `pipe.scheduler`'s (truncated) schedule."""
    from diffusers.pipelines.hidream_image.pipeline_hidream_image import calculate_shift
    from diffusers.utils.torch_utils import randn_tensor

    device = pipe._execution_device
    dtype = pipe.transformer.dtype
    batch = len(generators)
    shape = (batch, pipe.transformer.config.in_channels,
             2 * (height // (pipe.vae_scale_factor * 2)), 2 * (width // (pipe.vae_scale_factor * 2)))
    noise = randn_tensor(shape, generator=generators, device=device, dtype=dtype)  # as prepare_latents draws it

    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    pixels = pixels.to(device=device, dtype=pipe.vae.dtype)
    encoded = pipe.vae.encode(pixels).latent_dist.mode()
    clean = ((encoded - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor).to(dtype)
    clean = clean.expand(batch, -1, -1, -1)

    scheduler = pipe.scheduler
    # The schedule the pipeline will set (HiDreamImagePipeline.__call__, step 5).
    if _is_unipc(scheduler):
        scheduler.set_timesteps(steps, device=device)
    else:
        scheduler.set_timesteps(steps, device=device, mu=calculate_shift(pipe.transformer.max_seq))
    first = scheduler.timesteps[:1].repeat(batch)
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(clean, first, noise)
    return scheduler.add_noise(clean, noise, first)


def _is_unipc(scheduler: Any) -> bool:
    from diffusers import UniPCMultistepScheduler

    return isinstance(scheduler, UniPCMultistepScheduler)


def scheduler_starting_at(scheduler: Any, skip: int) -> Any:
    """A copy of `scheduler` whose schedules start `skip` steps in (see the module docstring)."""
    copy = _starting_at_class(type(scheduler)).from_config(scheduler.config)
    copy.skip_steps = skip
    return copy


@cache
def _starting_at_class(base: type) -> type:
    def set_timesteps(self, *args, **kwargs):
        base.set_timesteps(self, *args, **kwargs)
        skip = self.skip_steps * self.order
        if skip:
            if skip >= len(self.timesteps):
                raise ValueError(f"cannot skip {skip} of {len(self.timesteps)} steps")
            self.timesteps = self.timesteps[skip:]
            self.sigmas = self.sigmas[skip:]

    return type(base.__name__, (base,), {"set_timesteps": set_timesteps, "skip_steps": 0,
                                        "__module__": base.__module__,
                                        "__doc__": f"{base.__name__} starting `skip_steps` steps in."})
