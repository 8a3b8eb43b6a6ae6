"""The per-request controls in the order the engine enters them around one pipeline call, and the
post-processors run on the finished images. Each control is one module of this package (the Flux
control image is its family's); their shared types are in base.py.
"""

from __future__ import annotations

from diffserve.engine.controls.base import Control, PostProcessor
from diffserve.engine.controls.clip_skip import clip_skip_control
from diffserve.engine.controls.embeddings import use_embedding
from diffserve.engine.controls.eta_noise import eta_noise_control
from diffserve.engine.controls.ip_adapter import use_ip_adapter
from diffserve.engine.controls.lora import apply_loras
from diffserve.engine.controls.safety import safety_postprocessor
from diffserve.engine.controls.schedulers import scheduler_control
from diffserve.engine.controls.tiling import tiling_control
from diffserve.engine.controls.tome import tomesd_control
from diffserve.engine.controls.vae import use_vae
from diffserve.engine.families.flux_control import control_image_control

# Order matters: pipeline-replacing controls (VAE, scheduler) before weight patches (LoRA) and call args.
CONTROLS: list[Control] = [scheduler_control, eta_noise_control, use_vae, apply_loras, use_embedding,
                           tomesd_control, tiling_control, clip_skip_control, use_ip_adapter, control_image_control]
POSTPROCESSORS: list[PostProcessor] = [safety_postprocessor]

# Step-level batching (engine/batching.py): the controls that act on one request's own objects (its scheduler
# copy, its prompt encoding) are entered per row; the others change the shared model and are entered once per
# batch, whose rows all ask for the same ones (core/batching.py's key, tomesd and tiling included; IP-Adapter is never
# batched).
ROW_CONTROLS: list[Control] = [scheduler_control, clip_skip_control]
# eta noise: a batched row's own step arguments carry it (engine/batching.py), never the shared scheduler
BATCH_CONTROLS: list[Control] = [control for control in CONTROLS
                                 if control not in ROW_CONTROLS and control is not eta_noise_control]
