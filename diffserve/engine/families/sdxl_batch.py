"""Stable Diffusion XL img2img as a batched loop: StableDiffusionXLImg2ImgPipeline.__call__ cut like the SD
loop (sd_batch.py), plus SDXL's added conditioning per row -- pooled text embeddings and the size / crop /
aesthetic time ids (the pipeline's defaults: original and target size the output's) -- and its VAE decode
(float16 VAEs upcast as the pipeline does, latents mean / std when the VAE config has them)."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from diffserve.engine.families.base import RunInputs
from diffserve.engine.families.batched import Row, step_kwargs
from diffserve.engine.families.sd_batch import StableDiffusionBatchLoop, init_latents, timesteps_for

AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5  # the pipeline's defaults


class StableDiffusionXLBatchLoop(StableDiffusionBatchLoop):
    def start(self, pipe: Any, inputs: RunInputs, scheduler: Any) -> Row:
        req, device = inputs.request, pipe._execution_device
        n = req.samples
        cfg = req.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=inputs.prompt, device=device, num_images_per_prompt=n, do_classifier_free_guidance=cfg,
            negative_prompt=inputs.negative_prompt or None, clip_skip=inputs.call_kwargs.get("clip_skip"))
        timesteps = timesteps_for(pipe, scheduler, req.steps, req.strength, device)
        latents = init_latents(pipe, inputs, scheduler, timesteps, positive.dtype, device, add_noise=True)
        size = (latents.shape[-2] * pipe.vae_scale_factor, latents.shape[-1] * pipe.vae_scale_factor)
        projection = (int(pooled.shape[-1]) if pipe.text_encoder_2 is None
                      else pipe.text_encoder_2.config.projection_dim)
        time_ids, negative_time_ids = pipe._get_add_time_ids(
            size, (0, 0), size, AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE, size, (0, 0), size,
            dtype=positive.dtype, text_encoder_projection_dim=projection)
        time_ids = time_ids.repeat(n, 1)
        if cfg:
            cond = {"encoder_hidden_states": torch.cat([negative, positive]),
                    "text_embeds": torch.cat([negative_pooled, pooled]),
                    "time_ids": torch.cat([negative_time_ids.repeat(n, 1), time_ids])}
        else:
            cond = {"encoder_hidden_states": positive, "text_embeds": pooled, "time_ids": time_ids}
        cond = {k: v.to(device) for k, v in cond.items()}
        if pipe.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(req.guidance_scale - 1).repeat(n)
            cond["timestep_cond"] = pipe.get_guidance_scale_embedding(
                scale, embedding_dim=pipe.unet.config.time_cond_proj_dim).to(device=device, dtype=latents.dtype)
        return Row(inputs=inputs, scheduler=scheduler, timesteps=timesteps, latents=latents,
                   guidance=req.guidance_scale, cfg=cfg, cond=cond, step_kwargs=step_kwargs(scheduler, inputs.generators))

    @staticmethod
    def conditioning(pipe: Any, rows: list[Row]) -> dict[str, Any]:
        merged = StableDiffusionBatchLoop.conditioning(pipe, rows)
        merged["added_cond_kwargs"] = {"text_embeds": merged.pop("text_embeds"), "time_ids": merged.pop("time_ids")}
        return merged

    def finish(self, pipe: Any, row: Row) -> list[Image.Image]:
        vae, latents = pipe.vae, row.latents
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            pipe.upcast_vae()
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        try:
            image = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
        if pipe.watermark is not None:
            image = pipe.watermark.apply_watermark(image)
        return list(pipe.image_processor.postprocess(image, output_type="pil"))
