"""What a model family provides to the engine: how to build its tiny offline model, how to load a
pipeline, and how to run one request on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from PIL import Image

from diffserve.core.request import GenerationRequest
from diffserve.engine.models.loading import ModelSource


@dataclass
class RunInputs:
    """Everything one pipeline call needs, after the controls had their say."""

    request: GenerationRequest
    init_image: Image.Image | None  # already width x height; None for txt2img
    extra_images: list[Image.Image]  # reference images (Qolaba file_urls, Kontext inputs...)
    generators: list[torch.Generator]  # one per sample, seeded seed+i
    prompt: str
    negative_prompt: str | None
    ip_adapter_image: Image.Image | None = None
    call_kwargs: dict[str, Any] = field(default_factory=dict)  # added by controls (clip_skip, ip_adapter_image...)
    mask_image: Image.Image | None = None  # inpaint: white = repaint, already width x height

    @classmethod
    def for_request(cls, req: GenerationRequest, init_image: Image.Image | None, *,
                    extra_images: list[Image.Image] | None = None, ip_adapter_image: Image.Image | None = None,
                    mask_image: Image.Image | None = None) -> RunInputs:
        """The request's inputs before the controls: one CPU generator per sample, seeded seed + i."""
        return cls(request=req, init_image=init_image, extra_images=list(extra_images or []),
                   generators=[torch.Generator(device="cpu").manual_seed((req.seed + i) % 2**64)
                               for i in range(req.samples)],
                   prompt=req.prompt, negative_prompt=req.negative_prompt, ip_adapter_image=ip_adapter_image,
                   mask_image=mask_image)

class Family(Protocol):
    name: str

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        """Load a pipeline for this family (diffusers' own loaders)."""

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        """Generate `request.samples` images."""


TinyBuilder = Callable[[Path], Path]


def img2img_kwargs(inputs: RunInputs, **family: Any) -> dict[str, Any]:
    """The img2img call diffusers' img2img pipelines share: one init image per sample (each encoded with its own
    generator: diffusers deprecates duplicating one), the request's strength, steps, guidance and sample count,
    PIL images out; plus the family's own arguments (prompt or embeddings, size...) and the controls'."""
    req = inputs.request
    return dict(
        image=[inputs.init_image] * req.samples,
        strength=req.strength,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance_scale,
        num_images_per_prompt=req.samples,
        generator=inputs.generators,
        output_type="pil",
        **family,
        **inputs.call_kwargs,
    )


def call_in_mode(pipe: Any, inputs: RunInputs, kwargs: dict[str, Any]) -> list[Image.Image]:
    """Call the loaded img2img pipeline -- or, for text to image and inpainting, diffusers' pipeline of that
    task built `from_pipe` on the same components at call time (no second copy of any weight; the controls'
    scheduler, VAE and LoRA changes are seen). `kwargs` is the family's img2img call."""
    req = inputs.request
    if req.mode == "txt2img":
        from diffusers import AutoPipelineForText2Image

        pipe = _quiet(AutoPipelineForText2Image.from_pipe(pipe))
        kwargs = {k: v for k, v in kwargs.items() if k not in ("image", "strength")}
        kwargs.update(width=req.width, height=req.height)
    elif req.mode == "inpaint":
        from diffusers import AutoPipelineForInpainting

        pipe = _quiet(AutoPipelineForInpainting.from_pipe(pipe))
        kwargs.update(mask_image=[inputs.mask_image] * req.samples, width=req.width, height=req.height)
        # outside the mask the init image is kept exactly (as A1111 overlays it): the VAE round trip of the
        # kept area would otherwise blur it slightly
        return [Image.composite(image, inputs.init_image, inputs.mask_image) for image in pipe(**kwargs).images]
    return list(pipe(**kwargs).images)


def _quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe
