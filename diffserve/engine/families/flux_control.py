"""FLUX.1 structural control img2img: FLUX.1-Canny-dev and FLUX.1-Depth-dev, through
diffusers' FluxControlImg2ImgPipeline.

The control image is computed from the init image (engine/families/control_images.py) by the
`control_image_control` control, which the engine enters before the family runs:

* flux-canny: OpenCV Canny edges of the init image (thresholds 100/200).
* flux-depth: the depth map of the init image from a transformers depth-estimation model. Which
  model: the entry's `depth_model` (a hub id such as LiheYoung/depth-anything-large-hf or
  Intel/dpt-hybrid-midas, or a local folder), else the model folder's `depth_estimator/`
  subfolder (tiny-flux-depth has one). It is loaded on the first request and kept with the
  pipeline (in the cache's per-model state, counted in its memory).

The pipeline then denoises the noised init image (strength) with the control image's latents
concatenated to the latents, as those models were trained. Like every Flux pipeline it does not
take the size from the init image: the engine passes height and width (multiples of 16).
`guidance_scale` is the distilled guidance (FLUX.1-Canny-dev is used at 30, Depth-dev at 10);
negative prompts are not used (no classifier-free guidance in FLUX.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.engine.families.control_images import DepthEstimator, canny_edges
from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.families.base import RunInputs, img2img_kwargs
from diffserve.engine.families.checks import require_pipeline

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext

FLUX_CONTROL_PIPELINES = ("FluxControlImg2ImgPipeline",)
DEPTH_SUBFOLDER = "depth_estimator"
CONTROL_IMAGE = "control_image"  # the call argument the control adds
_DEPTH_STATE = "depth_estimator"


class FluxControlFamily:
    name = "flux-control"
    control = ""  # "canny" or "depth"

    def load(self, source: ModelSource, *, device: str, dtype: torch.dtype) -> Any:
        pipe = load_img2img_pipeline(source, device=device, dtype=dtype)
        return require_pipeline(pipe, self.name, FLUX_CONTROL_PIPELINES, source)

    def run(self, pipe: Any, inputs: RunInputs) -> list[Image.Image]:
        req = inputs.request
        if CONTROL_IMAGE not in inputs.call_kwargs:
            raise RuntimeError(f"{self.name}: no control image (control_image_control did not run)")
        out = pipe(**img2img_kwargs(inputs, prompt=inputs.prompt, height=req.height, width=req.width))
        # Flux floors sizes to multiples of 16; the engine decides the output size.
        size = (req.width, req.height)
        return [img if img.size == size else img.resize(size, Image.Resampling.LANCZOS) for img in out.images]


class FluxCannyFamily(FluxControlFamily):
    name = "flux-canny"
    control = "canny"


class FluxDepthFamily(FluxControlFamily):
    name = "flux-depth"
    control = "depth"


CONTROL_OF_FAMILY = {FluxCannyFamily.name: FluxCannyFamily.control, FluxDepthFamily.name: FluxDepthFamily.control}


@contextmanager
def control_image_control(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    """Adds `control_image` (computed from the init image) to the call of flux-canny / flux-depth models."""
    kind = CONTROL_OF_FAMILY.get(ctx.entry.family)
    if kind == "canny":
        inputs.call_kwargs[CONTROL_IMAGE] = canny_edges(inputs.init_image)
    elif kind == "depth":
        inputs.call_kwargs[CONTROL_IMAGE] = depth_estimator(ctx).depth_map(inputs.init_image)
    yield


def depth_estimator(ctx: ControlContext) -> DepthEstimator:
    """The model's depth estimator, loaded once per loaded pipeline (again if the entry changed it)."""
    location = depth_model_location(ctx.model_id, ctx.entry)
    loaded = ctx.state.get(_DEPTH_STATE)
    if loaded is None or loaded.location != location:
        ctx.state.pop(_DEPTH_STATE, None)
        ctx.state[_DEPTH_STATE] = loaded = DepthEstimator.load(location, device=ctx.device)
    return loaded


def depth_model_location(model_id: str, entry: Any) -> str:
    """The entry's `depth_model`, else its folder's depth_estimator/; InvalidInput when it has neither."""
    configured = getattr(entry, "depth_model", None)
    if configured:
        return configured
    if entry.kind == "folder" and (Path(entry.location) / DEPTH_SUBFOLDER / "config.json").is_file():
        return str(Path(entry.location) / DEPTH_SUBFOLDER)
    raise InvalidInput(
        f"Model {model_id} is a flux-depth model without a depth model: set its depth_model (e.g. "
        f"LiheYoung/depth-anything-large-hf) or add a {DEPTH_SUBFOLDER}/ folder to the model folder",
        field="model_id",
    )
