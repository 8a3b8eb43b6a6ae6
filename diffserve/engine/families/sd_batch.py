"""Stable Diffusion 1.x/2.x img2img as a batched loop: StableDiffusionImg2ImgPipeline.__call__ cut into
start (encode prompt, timesteps at the strength's index, noised init latents), one UNet forward over
many rows, and finish (VAE decode, the pipeline's own post-processing). The pipeline's helpers run with
the row's own scheduler in place, so a row alone gives the pipeline's image."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from PIL import Image

from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.batched import Row, scheduler_of, split_guided, step_kwargs
from diffserve.engine.stepcache.deepcache import capture, shallow_forward


def timesteps_for(pipe: Any, scheduler: Any, steps: int, strength: float, device: Any) -> torch.Tensor:
    """retrieve_timesteps + get_timesteps of the img2img pipelines, on the row's scheduler."""
    scheduler.set_timesteps(steps, device=device)
    with scheduler_of(pipe, scheduler):
        timesteps, _ = pipe.get_timesteps(steps, strength, device)
    return timesteps


def init_latents(pipe: Any, inputs: RunInputs, scheduler: Any, timesteps: torch.Tensor, dtype: torch.dtype,
                 device: Any, **extra: Any) -> torch.Tensor:
    """The init image encoded (one per sample, each with its generator) and noised to the first timestep."""
    n = inputs.request.samples
    image = pipe.image_processor.preprocess([inputs.init_image] * n)
    with scheduler_of(pipe, scheduler):
        return pipe.prepare_latents(image, timesteps[:1].repeat(n), 1, n, dtype, device, inputs.generators,
                                    **extra)


class StableDiffusionBatchLoop:
    def start(self, pipe: Any, inputs: RunInputs, scheduler: Any) -> Row:
        req, device = inputs.request, pipe._execution_device
        cfg = req.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        positive, negative = pipe.encode_prompt(inputs.prompt, device, req.samples, cfg,
                                                inputs.negative_prompt or None,
                                                clip_skip=inputs.call_kwargs.get("clip_skip"))
        cond = {"encoder_hidden_states": torch.cat([negative, positive]) if cfg else positive}
        if pipe.unet.config.time_cond_proj_dim is not None:  # guidance-distilled (LCM) UNets
            scale = torch.tensor(req.guidance_scale - 1).repeat(req.samples)
            cond["timestep_cond"] = pipe.get_guidance_scale_embedding(
                scale, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(device=device, dtype=positive.dtype)
        timesteps = timesteps_for(pipe, scheduler, req.steps, req.strength, device)
        latents = init_latents(pipe, inputs, scheduler, timesteps, positive.dtype, device)
        return Row(inputs=inputs, scheduler=scheduler, timesteps=timesteps, latents=latents,
                   guidance=req.guidance_scale, cfg=cfg, cond=cond, step_kwargs=step_kwargs(scheduler, inputs.generators))

    def forward(self, pipe: Any, rows: list[Row]) -> list[torch.Tensor]:
        """Rows whose DeepCache (engine/stepcache/deepcache.py) wants this step full, and rows without a cache,
        share one whole-UNet forward; the rows on a cached step share one shallow forward."""
        full = [row for row in rows if row.cache is None or row.cache.wants_full(row.index)]
        cached = [row for row in rows if row not in full]
        outputs: dict[int, torch.Tensor] = {}
        if full:
            sample, timestep = self.model_input(full)
            keep = any(row.cache is not None for row in full)
            with capture(pipe.unet) if keep else nullcontext([]) as seen:
                output = pipe.unet(sample, timestep, **self.conditioning(pipe, full), return_dict=False)[0]
            at = 0
            for row in full:
                n = row.samples * (2 if row.cfg else 1)
                if row.cache is not None:
                    row.cache.features, row.cache.full_steps = seen[-1][at:at + n].clone(), row.cache.full_steps + 1
                at += n
            outputs.update(zip(map(id, full), split_guided(output, full)))
        if cached:
            sample, timestep = self.model_input(cached)
            features = torch.cat([row.cache.features for row in cached])
            output = shallow_forward(pipe.unet, sample, timestep, features, **self.conditioning(pipe, cached))
            for row in cached:
                row.cache.cached_steps += 1
            outputs.update(zip(map(id, cached), split_guided(output, cached)))
        return [outputs[id(row)] for row in rows]

    @staticmethod
    def model_input(rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' scaled latents (CFG rows doubled) and one timestep per batch row."""
        samples, timesteps = [], []
        for row in rows:
            x = torch.cat([row.latents] * 2) if row.cfg else row.latents
            samples.append(row.scheduler.scale_model_input(x, row.t))
            timesteps.append(row.t.float().expand(x.shape[0]))
        return torch.cat(samples), torch.cat(timesteps)

    @staticmethod
    def conditioning(pipe: Any, rows: list[Row]) -> dict[str, Any]:
        """Every row's conditioning, concatenated in row order (each already has its forward rows)."""
        keys = rows[0].cond.keys()
        return {key: torch.cat([row.cond[key] for row in rows]) for key in keys}

    def finish(self, pipe: Any, row: Row) -> list[Image.Image]:
        vae = pipe.vae
        image = vae.decode(row.latents / vae.config.scaling_factor, return_dict=False,
                           generator=row.inputs.generators)[0]
        image, nsfw = pipe.run_safety_checker(image, pipe._execution_device, row.latents.dtype)
        denormalize = [True] * image.shape[0] if nsfw is None else [not flagged for flagged in nsfw]
        return list(pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=denormalize))
