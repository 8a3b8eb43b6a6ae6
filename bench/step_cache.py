"""Per-request step caching (engine/stepcache): per-image denoising time and distance to the uncached picture.

  .venv/bin/python bench/step_cache.py            # demo-sd and tiny-flux at 256 px, 30 steps; real-size SD 1.5 UNet
  .venv/bin/python bench/step_cache.py --quick    # the same code at 64 px, 6 steps, the narrow SD 1.5 UNet
  .venv/bin/python bench/step_cache.py --intervals 3 --thresholds   # a shorter full run: interval 3, no Flux

1. demo-sd (trained UNet, the default model) and tiny-flux (random weights): one request as the one row of a
   batch (the engine's own path for a cached request), strength 1.0, CFG on (guidance 7.5). Denoising time is
   the ticks only (prompt encoding and VAE decode excluded); PSNR is against the same request uncached.
2. The real-size SD 1.5 UNet architecture (bench/gpu.py's SD15_UNET: diffusers' config of SD 1.5, random
   weights, no download): one image with CFG (UNet batch 2) denoised for the step count, full steps as
   UNet2DConditionModel runs them and cached steps as DeepCache's shallow forward, timed end to end (speed does
   not depend on weight values; its PSNR would mean nothing, so none is printed).
One run, ratios within the run; the machine may be shared, so only the ratios compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def psnr(a, b) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def engine_rows(models: dict[str, list], px: int, steps: int) -> None:
    from PIL import Image

    from diffserve.core.request import GenerationRequest
    from diffserve.core.step_cache import StepCache
    from diffserve.engine.generate import Engine
    from diffserve.engine.models.registry import ModelRegistry

    image = Image.effect_noise((px, px), 48).convert("RGB").filter(__import__("PIL.ImageFilter").ImageFilter.BLUR)
    print(f"1. per image, {px} px, {steps} steps x strength 1.0, CFG 7.5, fp32, {torch.get_num_threads()} torch "
          f"threads (denoising only; PSNR to the uncached output)")
    print(f"{'model':12s}{'step cache':28s}{'denoise s':>10s}{'speed-up':>10s}{'full/cached':>13s}{'PSNR dB':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = Engine(ModelRegistry.load(root / "none.json", root), max_models=1, dtype="fp32")
        for model, settings in models.items():
            base_s, base_img = None, None
            for n, setting in enumerate([StepCache(), StepCache(), *settings]):  # the first: a warm-up
                req = GenerationRequest(model_id=model, prompt="a lighthouse on a cliff at sunset",
                                        negative_prompt="blurry", init_image_key="k", width=px, height=px,
                                        steps=2 if n == 0 else steps, guidance_scale=7.5, strength=1.0, seed=7, step_cache=setting,
                                        safety_checker=False)
                batch = engine.open_batch(req)
                with batch:
                    row = batch.join(req, image)
                    started = time.perf_counter()
                    while not row.done:
                        batch.tick()
                    took = time.perf_counter() - started
                    out = batch.finish(row)[0][0]
                ran = "-" if row.cache is None else f"{row.cache.full_steps}/{row.cache.cached_steps}"
                if n == 0:
                    continue
                if base_s is None:
                    base_s, base_img = took, out
                    print(f"{model:12s}{'off':28s}{took:10.2f}{1.0:9.2f}x{ran:>13s}{'-':>9s}")
                    continue
                name = ", ".join(f"{k} {v}" for k, v in setting.model_dump(exclude_none=True).items())
                print(f"{model:12s}{name:28s}{took:10.2f}{base_s / took:9.2f}x{ran:>13s}{psnr(out, base_img):9.1f}")


def unet_rows(arch: str, px: int, steps: int, intervals: list[int]) -> None:
    from diffusers import UNet2DConditionModel
    from gpu import UNETS

    from diffserve.engine.stepcache.deepcache import DeepCacheRow, capture, shallow_forward

    config = UNETS[arch]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    side = px // 8
    latents = torch.randn(2, 4, side, side)
    text = torch.randn(2, 77, config["cross_attention_dim"])
    print(f"2. {arch} UNet architecture (random weights), {px} px, {steps} steps, CFG (UNet batch 2), fp32, "
          f"{torch.get_num_threads()} torch threads: per image")
    print(f"{'step cache':28s}{'denoise s':>10s}{'speed-up':>10s}{'full/cached':>13s}{'shallow/full':>14s}")
    base = None
    with torch.inference_mode():
        unet(latents, torch.tensor([999.0] * 2), encoder_hidden_states=text)  # a warm-up
        for interval in [1, *intervals]:
            cache, x, shallow_s, full_s = DeepCacheRow(interval), latents.clone(), [], []
            started = time.perf_counter()
            for i in range(steps):
                t = torch.tensor([999.0 - i * 999 / steps] * 2)
                at = time.perf_counter()
                if cache.wants_full(i):
                    with capture(unet) as seen:
                        out = unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
                    cache.features, cache.full_steps = seen[-1], cache.full_steps + 1
                    full_s.append(time.perf_counter() - at)
                else:
                    out = shallow_forward(unet, x, t, cache.features, encoder_hidden_states=text)
                    cache.cached_steps += 1
                    shallow_s.append(time.perf_counter() - at)
                x = x - 0.01 * out
            took = time.perf_counter() - started
            base = base or took
            name = "off" if interval == 1 else f"method deepcache, interval {interval}"
            ratio = f"{statistics.median(shallow_s) / statistics.median(full_s):.2f}" if shallow_s else "-"
            print(f"{name:28s}{took:10.2f}{base / took:9.2f}x{cache.full_steps:>7d}/{cache.cached_steps:<5d}"
                  f"{ratio:>14s}")


def main() -> None:
    from diffserve.core.step_cache import StepCache

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 px, 6 steps, the narrow SD 1.5 UNet (seconds)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--intervals", type=int, nargs="*", default=None, help="DeepCache intervals (default 2 3 5)")
    ap.add_argument("--thresholds", type=float, nargs="*", default=None, help="fbcache thresholds (default 0.3 0.5)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    px, steps = (64, 6) if args.quick else (256, 30)
    intervals = args.intervals if args.intervals is not None else [2, 3] if args.quick else [2, 3, 5]
    thresholds = args.thresholds if args.thresholds is not None else [0.5] if args.quick else [0.3, 0.5]
    deep = [StepCache(method="deepcache", interval=i) for i in intervals]
    fb = [StepCache(method="fbcache", threshold=t) for t in thresholds]
    print(f"bench/step_cache.py ({'quick' if args.quick else 'full'}; {torch.get_num_threads()} torch threads)")
    unet_rows("sd15-small" if args.quick else "sd15", px, steps, [3] if args.quick else intervals)
    engine_rows({"demo-sd": deep, **({"tiny-flux": fb} if fb else {})}, px, steps)


if __name__ == "__main__":
    main()
