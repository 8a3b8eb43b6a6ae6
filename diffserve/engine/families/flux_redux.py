"""FLUX.1 Redux image variation: FluxPriorReduxPipeline (image -> prompt embeddings) + FLUX.1 img2img.

A Redux model is a folder holding two diffusers folders:

    <model folder>/prior_redux/   FluxPriorReduxPipeline (black-forest-labs/FLUX.1-Redux-dev: SigLIP
                                  image encoder, feature extractor, Redux image embedder)
    <model folder>/flux/          the base FLUX.1 pipeline (black-forest-labs/FLUX.1-dev)

(either may be a symlink, e.g. to a Hugging Face cache snapshot). The prior is given the base
pipeline's text encoders and tokenizers, so the prompt is encoded and joined to the image tokens
(without them the prior ignores the prompt). The base is loaded as FluxImg2ImgPipeline: at strength
1 (the Redux models' default) the init image only reaches the output through the prior, which is
Redux's text-to-image variation; lower strengths also start from the noised init image.

Several images: the init image and every extra image (Qolaba `file_urls`) go to the prior as one
list with equal weights 1/N; the prior sums the weighted embeddings, so the prompt part stays as
it is and the image part is the references' average.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.loading import ModelSource, _load_errors, load_img2img_pipeline
from diffserve.engine.families.base import RunInputs, img2img_kwargs
from diffserve.engine.families.checks import require_pipeline
from diffserve.engine.families.flux import FLUX_PIPELINES

PRIOR_FOLDER = "prior_redux"
BASE_FOLDER = "flux"
_PRIOR_ATTR = "diffserve_prior_redux"


class ReduxPrior(torch.nn.Module):
    """The prior pipeline, attached to the base pipeline as a module, so that whatever measures a
    pipeline's memory by its modules (the engine's cache) also counts the prior's own weights."""

    def __init__(self, pipeline: Any) -> None:
        super().__init__()
        self.image_encoder = pipeline.image_encoder
        self.image_embedder = pipeline.image_embedder
        self.pipeline = pipeline  # not a Module: a plain attribute


def prior_of(pipe: Any) -> Any:
    """The FluxPriorReduxPipeline loaded with this base pipeline."""
    return getattr(pipe, _PRIOR_ATTR).pipeline


class FluxReduxFamily:
    name = "flux-redux"

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        """The base FluxImg2ImgPipeline, with its prior attached (controls act on the base pipeline)."""
        root = Path(source.location)
        if source.kind != "folder":
            raise InvalidInput(
                f"Model {source.location}: a Flux Redux model is a folder with {PRIOR_FOLDER}/ and {BASE_FOLDER}/ "
                f"subfolders (kind \"folder\"), not a {source.kind} source",
                field="model_id",
            )
        for sub in (PRIOR_FOLDER, BASE_FOLDER):
            if not (root / sub / "model_index.json").is_file():
                raise InvalidInput(
                    f"Model folder {source.location} has no {sub}/model_index.json (a Flux Redux model needs "
                    f"{PRIOR_FOLDER}/ and {BASE_FOLDER}/ diffusers folders)",
                    field="model_id",
                )
        base_source = ModelSource(kind="folder", location=str(root / BASE_FOLDER))
        base = require_pipeline(load_img2img_pipeline(base_source, device=device, dtype=dtype), self.name,
                                FLUX_PIPELINES, base_source)
        from diffusers import FluxPriorReduxPipeline

        with _load_errors(str(root / PRIOR_FOLDER)):
            prior = FluxPriorReduxPipeline.from_pretrained(
                str(root / PRIOR_FOLDER), dtype=dtype, local_files_only=True,
                text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
            )
        prior.set_progress_bar_config(disable=True)
        setattr(base, _PRIOR_ATTR, ReduxPrior(prior.to(device)))
        return base

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        req = inputs.request
        references = [inputs.init_image, *inputs.extra_images]
        weights = [1.0 / len(references)] * len(references)
        embeds = prior_of(pipe)(
            image=[im.convert("RGB") for im in references],
            prompt=inputs.prompt,
            prompt_embeds_scale=weights,
            pooled_prompt_embeds_scale=weights,
        )
        out = pipe(**img2img_kwargs(inputs, prompt_embeds=embeds.prompt_embeds,
                                    pooled_prompt_embeds=embeds.pooled_prompt_embeds,
                                    height=req.height, width=req.width))
        return list(out.images)
