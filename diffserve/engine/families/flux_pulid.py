"""FLUX.1 with PuLID identity (PuLID-FLUX): the init image's face steers who the output shows.

A PuLID model is a FLUX.1 diffusers folder with a `pulid/` subfolder (engine/identity/config.py
describes it: the PuLID weights, the identity embedder's files, optionally config.json). The base
is loaded as FluxImg2ImgPipeline, so `strength` works as for plain Flux; at strength 1 (the tiny
model's default) the init image reaches the output only as identity, PuLID's text-to-image use.

Per request: the largest face of the init image (Qolaba `image`, ModelsLab `init_image`) is found,
embedded (engine/identity/embedders.py) and turned into ID tokens; for the pipeline call only,
forward hooks on the transformer's blocks add `id_weight * CA(id_tokens, image states)` to the image
stream (every 2nd double-stream and every 4th single-stream block), and are removed afterwards, so
the cached pipeline object serves other calls unchanged. With a negative prompt (true CFG) the
negative pass carries the ID tokens of no identity, as in PuLID-FLUX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.identity.errors import NoFaceFound
from diffserve.engine.identity.pulid import PuLIDModel, check_fits, load_pulid, pulid_injection
from diffserve.engine.identity.config import PULID_FOLDER
from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.checks import require_pipeline
from diffserve.engine.families.flux import FLUX_PIPELINES, FluxFamily, negative_prompt_kwargs

_PULID_ATTR = "diffserve_pulid"
DEFAULT_ID_WEIGHT = 1.0


def pulid_of(pipe: Any) -> PuLIDModel:
    return getattr(pipe, _PULID_ATTR)


class FluxPuLIDFamily:
    name = "flux-pulid"

    def __init__(self, id_weight: float = DEFAULT_ID_WEIGHT) -> None:
        self.id_weight = id_weight

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        root = Path(source.location)
        if source.kind != "folder" or not (root / PULID_FOLDER).is_dir():
            raise InvalidInput(
                f"Model {source.location}: a Flux PuLID model is a FLUX.1 diffusers folder with a {PULID_FOLDER}/ "
                f"subfolder holding the PuLID weights and the identity embedders (kind \"folder\")",
                field="model_id",
            )
        pipe = require_pipeline(load_img2img_pipeline(source, device=device, dtype=dtype), self.name,
                                FLUX_PIPELINES, source)
        try:
            pulid = load_pulid(root / PULID_FOLDER, device=device, dtype=dtype)
            check_fits(pulid.cfg, pipe.transformer)
        except (ValueError, RuntimeError, OSError) as exc:  # bad config, missing or mismatched weights
            raise InvalidInput(f"Model {source.location}: PuLID weights could not be loaded: {exc}",
                               field="model_id") from exc
        setattr(pipe, _PULID_ATTR, pulid)  # a Module attribute: the cache counts its weights
        return pipe

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        pulid = pulid_of(pipe)
        try:
            id_tokens, uncond_tokens = pulid.id_tokens(inputs.init_image,
                                                       uncond=bool(negative_prompt_kwargs(inputs)))
        except NoFaceFound as exc:
            raise InvalidInput(
                f"{exc}: Flux PuLID takes the identity from the init image (Qolaba `image`, ModelsLab "
                "`init_image`), which needs a clear frontal face",
                field="image") from exc
        cfg = pulid.cfg
        with pulid_injection(pipe.transformer, pulid.pulid.pulid_ca, id_tokens, self.id_weight,
                             cfg.double_interval, cfg.single_interval, uncond_tokens):
            return FluxFamily().run(pipe, inputs)  # the plain Flux img2img call, with the identity hooked in
