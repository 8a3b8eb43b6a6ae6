"""The GPU serving path: real-size architectures with random weights (no download), per dtype and compile.

For each architecture -- SD 1.5's UNet, SDXL's UNet, a FLUX.1-dev-sized transformer when the device has
the memory -- it times the denoiser's forward pass as a sampling step runs it (batch 2 for classifier-free
guidance on the UNets, 1 for Flux's distilled guidance) and the VAE decode, and prints it/s, seconds per
image (steps x step + decode) and peak memory, for fp32 / fp16 / bf16 and torch.compile off / on.
Then it runs the tiny model through the engine N times and prints memory at three points (no growth means
memory is freed between jobs).

Prints figures; asserts nothing.
  .venv/bin/python bench/gpu.py                      # every figure on cuda (a GPU machine)
  .venv/bin/python bench/gpu.py --device cpu --quick # the same code, narrow architectures at 64 px (seconds)
  .venv/bin/python bench/gpu.py --device cpu --sd15-256 # the real-size SD 1.5 UNet at 256 px, fp32 and bf16
--quick runs SD 1.5's and SDXL's UNet layouts (blocks, attention, conditioning) at a tenth of their widths at
64 px, fp32 and bf16, compile off, and 3 tiny-sd jobs: the code path in seconds, not the real sizes' figures
(tests/test_benches.py runs it).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2)
FLUX_PARAMS = 11.9e9


def narrow(config: dict, widths: tuple[int, ...], heads: int | tuple[int, ...], text: int) -> dict:
    """An architecture's layout (blocks, attention, conditioning) at other widths: --quick's small models."""
    out = {**config, "block_out_channels": widths, "attention_head_dim": heads, "cross_attention_dim": text,
           "norm_num_groups": 8}
    if "addition_time_embed_dim" in out:
        out.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=text + 6 * 8,
                   transformer_layers_per_block=(1, 1, 2))
    return out


SD15_SMALL = narrow(SD15_UNET, (32, 64, 128, 128), 8, 64)
SDXL_SMALL = narrow(SDXL_UNET, (32, 64, 128), (2, 4, 8), 64)
UNETS = {"sd15": SD15_UNET, "sdxl": SDXL_UNET, "sd15-small": SD15_SMALL, "sdxl-small": SDXL_SMALL}
VAE_SMALL = {**SD_VAE, "block_out_channels": (32, 32, 64, 64)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process high-water mark)


def reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn, device: str, iters: int, warmup: int) -> float:
    """Median seconds of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def unet_step(config: dict, px: int, dtype: torch.dtype, device: str, xl: bool):
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**config).to(dtype).eval()
    side = px // 8
    latents = torch.randn(2, 4, side, side, device=device, dtype=dtype)
    text = torch.randn(2, 77, config["cross_attention_dim"], device=device, dtype=dtype)
    extra = {}
    if xl:
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
                                      "time_ids": torch.tensor([[px, px, 0, 0, px, px]] * 2, device=device,
                                                               dtype=dtype)}
    t = torch.tensor([500, 500], device=device)
    return unet, lambda: unet(latents, t, encoder_hidden_states=text, **extra).sample


def flux_step(px: int, dtype: torch.dtype, device: str):
    from diffusers import FluxTransformer2DModel

    with torch.device(device):
        model = FluxTransformer2DModel(**FLUX_DEV).to(dtype).eval()
    side = px // 16
    n = side * side
    hidden = torch.randn(1, n, 64, device=device, dtype=dtype)
    text = torch.randn(1, 512, 4096, device=device, dtype=dtype)
    img_ids = torch.zeros(side, side, 3, device=device)
    img_ids[..., 1] += torch.arange(side, device=device)[:, None]
    img_ids[..., 2] += torch.arange(side, device=device)[None, :]
    kw = dict(hidden_states=hidden, encoder_hidden_states=text,
              pooled_projections=torch.randn(1, 768, device=device, dtype=dtype),
              timestep=torch.tensor([0.5], device=device, dtype=dtype),
              guidance=torch.tensor([3.5], device=device, dtype=dtype),
              img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(512, 3, device=device))
    return model, lambda: model(**kw, return_dict=False)[0]


def vae_decode(px: int, dtype: torch.dtype, device: str, latent_channels: int = 4, config: dict = SD_VAE):
    from diffusers import AutoencoderKL

    with torch.device(device):
        vae = AutoencoderKL(**{**config, "latent_channels": latent_channels}).to(dtype).eval()
    latents = torch.randn(1, latent_channels, px // 8, px // 8, device=device, dtype=dtype)
    return vae, lambda: vae.decode(latents).sample


def bench_denoisers(device: str, dtypes: list[str], compile_modes: list[bool], sizes: dict, iters: int,
                    steps: dict) -> None:
    print(f"\n{'model':<10} {'px':>5} {'dtype':<5} {'compile':<7} {'it/s':>8} {'step ms':>8} {'decode s':>8} "
          f"{'s/image':>8} {'peak GiB':>8}")
    free = torch.cuda.mem_get_info(device)[0] if device.startswith("cuda") else 0
    for name, pxs in sizes.items():
        for px in pxs:
            for dname in dtypes:
                dtype = DTYPES[dname]
                if name == "flux" and (dname == "fp32" or free < FLUX_PARAMS * 2 * 1.3):
                    continue  # 12B parameters: bf16/fp16 only, and only where they fit
                for compiled in compile_modes:
                    reset_peak(device)
                    with torch.inference_mode():
                        if name == "flux":
                            model, step = flux_step(px, dtype, device)
                        else:
                            model, step = unet_step(UNETS[name], px, dtype, device, xl=name.startswith("sdxl"))
                            if compiled:  # the published "compiled" figures are with channels_last too
                                model.to(memory_format=torch.channels_last)
                        if compiled:
                            model.compile()
                        step_s = timed(step, device, iters, warmup=3 if compiled else 1)
                        peak = peak_gib(device)
                        del model, step
                        reset_peak(device)
                        vae, decode = vae_decode(px, dtype if dname != "fp16" or name != "sdxl" else torch.float32,
                                                 device, latent_channels=16 if name == "flux" else 4,
                                                 config=VAE_SMALL if name.endswith("-small") else SD_VAE)
                        decode_s = timed(decode, device, max(1, iters // 4), warmup=1)
                        del vae, decode
                    n = steps[name]
                    print(f"{name:<10} {px:>5} {dname:<5} {'on' if compiled else 'off':<7} {1 / step_s:>8.2f} "
                          f"{step_s * 1000:>8.1f} {decode_s:>8.2f} {n * step_s + decode_s:>8.2f} {peak:>8.2f}",
                          flush=True)


def memory_over_jobs(device: str, jobs: int) -> None:
    """tiny-sd through the Engine `jobs` times (different seeds and sizes): memory at three points."""
    from PIL import Image

    from diffserve.core.request import GenerationRequest
    from diffserve.engine.generate import Engine
    from diffserve.engine.models.registry import ModelRegistry

    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    engine = Engine(ModelRegistry.load(root / "none.json", root / "models"), device=device, safety_checker="tiny",
                    models_dir=root / "models")
    marks = {min(10, jobs), jobs // 2, jobs}
    print(f"\nmemory over {jobs} tiny-sd jobs on {device} "
          f"({'allocated' if device.startswith('cuda') else 'resident set'}, MiB):")
    for i in range(1, jobs + 1):
        side = (64, 96, 128)[i % 3]
        req = GenerationRequest(model_id="tiny-sd", prompt=f"job {i}", init_image_key="", width=side, height=side,
                                steps=8, guidance_scale=7.5, strength=0.7, seed=i)
        engine.generate(req, Image.new("RGB", (side, side), (i % 255, 80, 160)))
        if i in marks:
            gc.collect()
            if device.startswith("cuda"):
                used = torch.cuda.memory_allocated(device) / 2**20
            else:
                used = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            print(f"  after job {i:>4}: {used:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="SD 1.5 / SDXL layouts at a tenth of their widths, 64 px, "
                    "fp32/bf16, compile off, 2 iterations, 3 tiny-sd jobs (the code path in seconds)")
    ap.add_argument("--sd15-256", action="store_true", help="the real-size SD 1.5 UNet at 256 px, fp32/bf16, "
                    "compile off, 2 iterations (a CPU's figures in minutes)")
    ap.add_argument("--jobs", type=int, default=200, help="tiny-sd jobs for the memory check (0: skip)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; --quick: 1)")
    args = ap.parse_args()
    device = args.device
    if args.threads or args.quick:  # a shared CPU's OpenMP threads wait on each other: 1 for the quick figures
        torch.set_num_threads(args.threads or 1)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench/gpu.py on {device} ({name}), torch {torch.__version__}")
    if args.quick:
        bench_denoisers(device, ["fp32", "bf16"], [False], {"sd15-small": [64], "sdxl-small": [64]}, iters=2,
                        steps={"sd15-small": 50, "sdxl-small": 30})
    elif args.sd15_256:
        bench_denoisers(device, ["fp32", "bf16"], [False], {"sd15": [256]}, iters=2, steps={"sd15": 50})
    else:
        bench_denoisers(device, ["fp32", "fp16", "bf16"], [False, True],
                        {"sd15": [512, 1024], "sdxl": [1024], "flux": [1024]}, iters=20,
                        steps={"sd15": 50, "sdxl": 30, "flux": 28})
    jobs = min(args.jobs, 3) if args.quick else args.jobs
    if jobs:
        memory_over_jobs(device, jobs)


if __name__ == "__main__":
    main()
