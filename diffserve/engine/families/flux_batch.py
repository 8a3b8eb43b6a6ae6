"""FLUX.1 img2img as a batched loop: FluxImg2ImgPipeline.__call__ cut into start (encode prompt -- and the
negative prompt for true CFG, flux.py --, shifted sigmas for the request's steps at the strength's index,
the init image encoded and scaled to the first sigma, packed), one transformer forward over many rows
(a timestep and a distilled guidance per row; a row with a negative prompt adds its negative rows to the same
forward instead of a second pass) and finish (unpack, VAE decode). Rows share the latent size, so the image
position ids; the text ids are the pipeline's (zeros, max_sequence_length long) for every row."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.batched import Row, scheduler_of, split_guided
from diffserve.engine.families.flux import TRUE_CFG_SCALE
from diffserve.engine.stepcache import fbcache

MAX_SEQUENCE_LENGTH = 512  # FluxImg2ImgPipeline.__call__'s default, which the family's call keeps


class FluxBatchLoop:
    def start(self, pipe: Any, inputs: RunInputs, scheduler: Any) -> Row:
        from diffusers.pipelines.flux.pipeline_flux_img2img import calculate_shift, retrieve_timesteps

        req, device = inputs.request, pipe._execution_device
        n, height, width = req.samples, req.height, req.width
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=inputs.prompt, device=device, num_images_per_prompt=n,
                                                      max_sequence_length=MAX_SEQUENCE_LENGTH)
        cfg = bool(inputs.negative_prompt) and TRUE_CFG_SCALE > 1
        if cfg:
            negative, negative_pooled, _ = pipe.encode_prompt(prompt=inputs.negative_prompt, device=device,
                                                              num_images_per_prompt=n,
                                                              max_sequence_length=MAX_SEQUENCE_LENGTH)
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
        config = scheduler.config
        seq_len = (height // pipe.vae_scale_factor // 2) * (width // pipe.vae_scale_factor // 2)
        mu = calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / req.steps, req.steps)
        retrieve_timesteps(scheduler, req.steps, device, sigmas=sigmas, mu=mu)
        image = pipe.image_processor.preprocess([inputs.init_image] * n, height=height, width=width)
        with scheduler_of(pipe, scheduler):
            timesteps, _ = pipe.get_timesteps(req.steps, req.strength, device)
            latents, image_ids = pipe.prepare_latents(
                image.to(dtype=torch.float32), timesteps[:1].repeat(n), n, pipe.transformer.config.in_channels // 4,
                height, width, embeds.dtype, device, inputs.generators, None)
        cond = {"encoder_hidden_states": embeds, "pooled_projections": pooled}
        if pipe.transformer.config.guidance_embeds:
            cond["guidance"] = torch.full([embeds.shape[0]], req.guidance_scale, device=device, dtype=torch.float32)
        return Row(inputs=inputs, scheduler=scheduler, timesteps=timesteps, latents=latents, guidance=TRUE_CFG_SCALE,
                   cfg=cfg, cond=cond, fixed={"txt_ids": text_ids, "img_ids": image_ids})

    def forward(self, pipe: Any, rows: list[Row]) -> list[torch.Tensor]:
        hidden, timesteps = [], []
        for row in rows:
            x = torch.cat([row.latents] * 2) if row.cfg else row.latents
            hidden.append(x)
            timesteps.append(row.t.expand(x.shape[0]).to(x.dtype))
        cond = {key: torch.cat([row.cond[key] for row in rows]) for key in rows[0].cond}
        if any(row.cache is not None for row in rows):  # First-Block Cache, each row its own (stepcache/fbcache.py)
            caches = [(row.samples * (2 if row.cfg else 1), row.cache) for row in rows]
            output = fbcache.forward(pipe.transformer, caches, hidden_states=torch.cat(hidden),
                                     timestep=torch.cat(timesteps) / 1000, joint_attention_kwargs={},
                                     **rows[0].fixed, **cond)
        else:
            output = pipe.transformer(hidden_states=torch.cat(hidden), timestep=torch.cat(timesteps) / 1000,
                                      joint_attention_kwargs={}, return_dict=False, **rows[0].fixed, **cond)[0]
        return split_guided(output, rows)

    def finish(self, pipe: Any, row: Row) -> list[Image.Image]:
        req = row.inputs.request
        latents = pipe._unpack_latents(row.latents, req.height, req.width, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents, return_dict=False)[0]
        return list(pipe.image_processor.postprocess(image, output_type="pil"))
