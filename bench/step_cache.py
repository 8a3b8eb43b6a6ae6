"""Per-request step caching (engine/stepcache): per-image denoising time and distance to the uncached picture.

  .venv/bin/python bench/step_cache.py --threads 1      # unet (SD 1.5), flux, engine, edits parts at 256 px, 30 steps
  .venv/bin/python bench/step_cache.py --quick          # the same code at 64 px, 6 steps, narrow models (seconds)
  .venv/bin/python bench/step_cache.py --parts unet --arches sdxl --steps 9 --intervals 3   # real-size SDXL UNet
  .venv/bin/python bench/step_cache.py --parts serve    # 8 clients through the server, batching x caching

Parts (--parts, comma-separated; default unet,flux,engine,edits):
2. unet: real-size UNet architectures (bench/gpu.py's SD 1.5 / SDXL configs, random weights, no download): one
   image with CFG (UNet batch 2), full steps as UNet2DConditionModel runs them, cached steps as DeepCache's
   shallow forward, timed end to end (speed does not depend on weight values; a PSNR would mean nothing).
3. flux: First-Block Cache on the FLUX.1-dev transformer's real block dimensions with fewer blocks (the 12B
   model does not fit this machine's RAM): measured per step, the real block count's ratio derived (said so).
1. engine: demo-sd (trained UNet, the default model) and tiny-flux (random weights), one request as the one
   row of a batch (the engine's path for a cached request), strength 1.0, CFG 7.5: denoising time (ticks only),
   PSNR to the same request uncached.
5. edits: demo-sd's edit measures (engine/demo/quality.py edit_amount) on its held-out photos, uncached and
   with each DeepCache interval, at --edit-side px, 30 steps x strength 0.5.
4. serve: caching and batching together through the real server (bench/batching.py's client harness), 8
   clients: batching off / on x caching off / on, images/s and latency. Not in --quick's default parts (two
   server starts: --quick --parts serve runs it at 64 px, 2 clients).
One run, ratios within the run; the machine may be shared, so only the ratios compare.
"""

from __future__ import annotations

import argparse
import json
import random
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


def demo_engine(root: Path):
    """The engine the engine and edits parts share (built-in models built under `root`), fp32."""
    from diffserve.engine.generate import Engine
    from diffserve.engine.models.registry import ModelRegistry

    return Engine(ModelRegistry.load(root / "none.json", root), max_models=2, dtype="fp32")


def engine_rows(engine, models: dict[str, list], px: int, steps: int) -> None:
    from PIL import Image

    from diffserve.core.request import GenerationRequest
    from diffserve.core.step_cache import StepCache

    image = Image.effect_noise((px, px), 48).convert("RGB").filter(__import__("PIL.ImageFilter").ImageFilter.BLUR)
    print(f"1. per image, {px} px, {steps} steps x strength 1.0, CFG 7.5, fp32, {torch.get_num_threads()} torch "
          f"threads (denoising only; PSNR to the uncached output)")
    print(f"{'model':12s}{'step cache':28s}{'denoise s':>10s}{'speed-up':>10s}{'full/cached':>13s}{'PSNR dB':>9s}")
    for model, settings in models.items():
        base_s, base_img = None, None
        for n, setting in enumerate([StepCache(), StepCache(), *settings]):  # the first: a warm-up
            req = GenerationRequest(model_id=model, prompt="a lighthouse on a cliff at sunset",
                                    negative_prompt="blurry", init_image_key="k", width=px, height=px,
                                    steps=2 if n == 0 else steps, guidance_scale=7.5, strength=1.0, seed=7,
                                    step_cache=setting, safety_checker=False)
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
    cond: dict = {"encoder_hidden_states": torch.randn(2, 77, config["cross_attention_dim"])}
    if config.get("addition_embed_type") == "text_time":  # SDXL: pooled text and size conditioning
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        cond["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled),
                                     "time_ids": torch.tensor([[px, px, 0, 0, px, px]] * 2, dtype=torch.float32)}
    params = sum(p.numel() for p in unet.parameters()) / 1e9
    print(f"2. {arch} UNet architecture ({params:.2f} B parameters, random weights), {px} px, {steps} steps, CFG "
          f"(UNet batch 2), fp32, {torch.get_num_threads()} torch threads: per image")
    print(f"{'step cache':28s}{'denoise s':>10s}{'speed-up':>10s}{'full/cached':>13s}{'shallow/full':>14s}")
    base = None
    with torch.inference_mode():
        unet(latents, torch.tensor([999.0] * 2), **cond)  # a warm-up
        for interval in [1, *intervals]:
            cache, x, shallow_s, full_s = DeepCacheRow(interval), latents.clone(), [], []
            started = time.perf_counter()
            for i in range(steps):
                t = torch.tensor([999.0 - i * 999 / steps] * 2)
                at = time.perf_counter()
                if cache.wants_full(i):
                    with capture(unet) as seen:
                        out = unet(x, t, **cond, return_dict=False)[0]
                    cache.features, cache.full_steps = seen[-1], cache.full_steps + 1
                    full_s.append(time.perf_counter() - at)
                else:
                    out = shallow_forward(unet, x, t, cache.features, **cond)
                    cache.cached_steps += 1
                    shallow_s.append(time.perf_counter() - at)
                x = x - 0.01 * out
            took = time.perf_counter() - started
            base = base or took
            name = "off" if interval == 1 else f"method deepcache, interval {interval}"
            ratio = f"{statistics.median(shallow_s) / statistics.median(full_s):.2f}" if shallow_s else "-"
            print(f"{name:28s}{took:10.2f}{base / took:9.2f}x{cache.full_steps:>7d}/{cache.cached_steps:<5d}"
                  f"{ratio:>14s}", flush=True)


FLUX_QUICK = dict(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                  axes_dims_rope=(4, 6, 6))  # --quick: the same code at tiny widths


def flux_rows(px: int, steps: int, blocks: tuple[int, int], thresholds: list[float], quick: bool) -> None:
    """First-Block Cache on FLUX.1-dev's transformer architecture with its real block dimensions (hidden 3072, 24
    heads of 128, T5 4096 / CLIP 768 inputs, 512 text tokens) but only `blocks` (double, single) of its 19 + 38
    blocks: the full 12B model does not fit this machine's RAM in fp32 or bf16. Each step goes through
    fbcache.forward (off: no row cache, every step computes). The last lines give one block's cost, so what a
    cached step saves at the real block count is stated as derived from them, not measured."""
    from diffusers import FluxTransformer2DModel
    from gpu import FLUX_DEV

    from diffserve.engine.stepcache.fbcache import FBCacheRow, forward

    class Watched(FBCacheRow):  # keeps each step's relative change of the first-block residual, for the print
        changes: list[float]

        def reuses(self, first: torch.Tensor) -> bool:
            if self.first is not None:
                self.__dict__.setdefault("changes", []).append(
                    float((first - self.first).abs().mean() / self.first.abs().mean()))
            return super().reuses(first)

    config = {**FLUX_DEV, "num_layers": blocks[0], "num_single_layers": blocks[1], **(FLUX_QUICK if quick else {})}
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**config).eval()
    side, text = px // 16, 32 if quick else 512
    hidden_dim = config["attention_head_dim"] * config["num_attention_heads"]
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] += torch.arange(side)[:, None]
    img_ids[..., 2] += torch.arange(side)[None, :]
    cond = dict(encoder_hidden_states=torch.randn(1, text, config["joint_attention_dim"]),
                pooled_projections=torch.randn(1, config["pooled_projection_dim"]), guidance=torch.tensor([3.5]),
                img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3))
    latents = torch.randn(1, side * side, config["in_channels"])
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"3. Flux transformer ({'tiny widths' if quick else 'FLUX.1-dev block dimensions'}, hidden {hidden_dim}; "
          f"{blocks[0]} double + {blocks[1]} single blocks of the real 19 + 38: NOT full size, {params:.2f} B "
          f"parameters, random weights), {px} px ({side * side} image + {text} text tokens), {steps} steps, no CFG "
          f"(guidance embedded), fp32, {torch.get_num_threads()} torch threads")
    print(f"{'step cache':28s}{'denoise s':>10s}{'speed-up':>10s}{'full/cached':>13s}{'cached/full':>13s}")
    base, full_s, cached_s = None, [], []
    with torch.inference_mode():
        forward(model, [(1, None)], hidden_states=latents, timestep=torch.tensor([1.0]), **cond)  # a warm-up
        for threshold in [None, *thresholds]:
            cache = Watched(threshold) if threshold else None
            x, started = latents.clone(), time.perf_counter()
            for i in range(steps):
                t = torch.tensor([1.0 - i / steps])
                at, before = time.perf_counter(), cache.cached_steps if cache else 0
                out = forward(model, [(1, cache)], hidden_states=x, timestep=t, **cond)
                (cached_s if cache and cache.cached_steps > before else full_s).append(time.perf_counter() - at)
                x = x - out / steps
            took = time.perf_counter() - started
            base = base or took
            ran = f"{cache.full_steps}/{cache.cached_steps}" if cache else f"{steps}/0"
            ratio = f"{statistics.median(cached_s) / statistics.median(full_s):.2f}" if cached_s else "-"
            name = "off" if cache is None else f"method fbcache, threshold {threshold}"
            seen = cache.__dict__.get("changes") if cache else None
            moved = f"  (first-block residual moved {min(seen):.0%}-{max(seen):.0%} a step)" if seen else ""
            print(f"{name:28s}{took:10.2f}{base / took:9.2f}x{ran:>13s}{ratio:>13s}{moved}", flush=True)
    if cached_s:  # a cached step: embeddings + the first block + the output; a full one adds the other blocks
        full, cached, n = statistics.median(full_s), statistics.median(cached_s), sum(blocks)
        real = cached + (full - cached) * 56 / (n - 1)  # the other blocks' cost scaled from n - 1 to 56
        print(f"   derived, not measured: at the real 19 + 38 blocks a full step ~{real:.1f} s and a cached one "
              f"~{cached:.1f} s ({cached / real:.3f} of it), taking the other blocks' cost per block as measured here")


def serve_rows(model: str, side: int, steps: int, clients: int, window_s: float, interval: int, threads: int,
               cycles: int) -> None:
    """Step caching and step-level batching together through the real server: 8 clients (ModelsLab v6 img2img,
    answered synchronously, identical parameters) against two servers, batching off and on, each serving `model`
    and `model`-cached (the same weights; models.json's step_cache: deepcache at `interval`, so each request of
    the cached id runs its own cache). bench/batching.py's client harness (run_cell: steady-state window,
    images/s by Little's law). Cells in the order of the table, `cycles` times (A, B, C, D, A, B...)."""
    from batching import bodies, pct, run_cell

    from diffserve.core.step_cache import StepCache
    from diffserve.engine.models.registry import builtin_models
    from tests.servers import DiffserveServer

    cached_id = f"{model}-cached"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        entry = builtin_models(root / "models")[model]
        cached = entry.model_copy(update={"step_cache": StepCache(method="deepcache", interval=interval)})
        models_file = root / "models.json"
        models_file.write_text(json.dumps({"models": {cached_id: cached.model_dump(mode="json", exclude_none=True)}}))
        servers = {}
        try:
            for mode in ("off", "on"):
                servers[mode] = DiffserveServer(root / mode, root / "models", env_overrides={
                    "DIFFSERVE_BATCHING__MODE": mode, "DIFFSERVE_TORCH_THREADS": str(threads),
                    "DIFFSERVE_PRELOAD_MODELS": json.dumps([model, cached_id]), "DIFFSERVE_SYNC_WAIT_S": "600",
                    "DIFFSERVE_LIMITS__MAX_QUEUED_PER_KEY": "0", "DIFFSERVE_MODELS_FILE": str(models_file),
                    "DIFFSERVE_ENGINE__MAX_MODELS": "2"}).start(timeout=600)
            keys = {mode: srv.create_key() for mode, srv in servers.items()}
            for mode, srv in servers.items():  # warm-up: the first calls of each model cost
                for name in (model, cached_id):
                    run_cell(srv.url, bodies("identical", 2, 64, keys[mode], name, random.Random(0), 2), 2, 0)
            print(f"4. {model} through the server: {clients} clients, identical v6 img2img requests, {side} px, "
                  f"{steps} steps x strength 0.7, 1 worker, {threads} torch thread(s); {cached_id} = {model} with "
                  f"step_cache deepcache interval {interval} (models.json); images/s by Little's law")
            print(f"{'batching':9s}{'step cache':22s}{'img/s':>8s}{'p50 s':>8s}{'p95 s':>8s}{'batch':>7s}"
                  f"{'speed-up':>10s}")
            cells = [("off", model), ("on", model), ("off", cached_id), ("on", cached_id)]
            base: list[float] = []
            for cycle in range(cycles):
                for mode, name in cells:
                    work = bodies("identical", 8 * clients, side, keys[mode], name, random.Random(side), steps)
                    rate, lat, batch, _ = run_cell(servers[mode].url, work, clients, window_s)
                    if (mode, name) == cells[0]:
                        base.append(rate)
                    cache = f"deepcache, interval {interval}" if name == cached_id else "off"
                    print(f"{mode:9s}{cache:22s}{rate:8.2f}{pct(lat, .5):8.2f}{pct(lat, .95):8.2f}"
                          f"{statistics.mean(batch):7.1f}{rate / base[-1]:9.2f}x", flush=True)
        finally:
            for srv in servers.values():
                srv.stop()


def edit_rows(engine, side: int, steps: int, strength: float, intervals: list[int], words: list[str]) -> None:
    """demo-sd's edit measures under caching (diffserve/engine/demo/quality.py): on each held-out photo, each edit
    word's output and the neutral prompt's output, with the same step cache; edit_amount (the share of the exact
    edit applied) per word, as a mean over the photos; 'kept': the cached amount over the uncached one. Each
    setting's prompts run as rows of one batch (a row alone = the same row in a batch, within 1/255)."""
    from diffserve.core.request import GenerationRequest
    from diffserve.core.step_cache import StepCache
    from diffserve.engine.demo import edits, quality

    neutral = "women playing tennis"  # bench/demo_quality.py's REFERENCE
    photos = quality.held_out_images(side)
    settings = [StepCache(), *(StepCache(method="deepcache", interval=i) for i in intervals)]
    amounts: dict[int, dict[str, float]] = {}  # interval (1: off) -> word -> mean amount
    plain: dict[tuple[str, str], np.ndarray] = {}  # (photo, prompt) -> the uncached output
    distance: dict[int, list[float]] = {}  # interval -> PSNR of each output to its uncached one
    for setting in settings:
        per_word: dict[str, list[float]] = {w: [] for w in words}
        for photo, image in photos.items():
            prompts = [neutral, *words]
            reqs = [GenerationRequest(model_id="demo-sd", prompt=p, init_image_key="k", width=side, height=side,
                                      steps=steps, guidance_scale=1.0, strength=strength, seed=0,
                                      step_cache=setting, safety_checker=False) for p in prompts]
            batch = engine.open_batch(reqs[0])
            with batch:
                rows = [batch.join(r, edits.to_pil(image)) for r in reqs]
                while not all(r.done for r in rows):
                    batch.tick()
                outs = [edits.from_pil(batch.finish(r)[0][0]) for r in rows]
            for word, out in zip(words, outs[1:]):
                per_word[word].append(quality.edit_amount(word, image, outs[0], out))
            for prompt, out in zip(prompts, outs):
                if setting.on:
                    distance.setdefault(setting.interval, []).append(psnr(out * 255, plain[photo, prompt] * 255))
                else:
                    plain[photo, prompt] = out
        amounts[setting.interval or 1] = {w: float(np.mean(v)) for w, v in per_word.items()}
    print(f"5. demo-sd's edit measures under caching: quality.edit_amount (share of the exact edit applied; means "
          f"over the held-out photos {', '.join(photos)}), {side} px, {steps} steps x strength {strength}, seed 0; "
          f"kept = cached / uncached")
    print(f"{'word':12s}{'off':>7s}" + "".join(f"{f'interval {i}':>13s}{'kept':>7s}" for i in intervals))
    for word in words:
        off = amounts[1][word]
        cells = "".join(f"{amounts[i][word]:13.2f}{amounts[i][word] / off:6.0%} " if abs(off) > 1e-6 else
                        f"{amounts[i][word]:13.2f}{'-':>7s}" for i in intervals)
        print(f"{word:12s}{off:7.2f}{cells}")
    mean = {i: float(np.mean([amounts[i][w] / amounts[1][w] for w in words])) for i in intervals}
    print("mean kept   " + ", ".join(f"interval {i}: {mean[i]:.0%} (PSNR to uncached, mean over the outputs "
                                      f"{np.mean(distance[i]):.1f} dB)" for i in intervals))


def main() -> None:
    from diffserve.core.step_cache import StepCache

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 px, 6 steps, narrow models, 1 torch thread (seconds)")
    ap.add_argument("--parts", default="unet,flux,engine,edits",
                    help="which parts: unet (real-size UNet architectures), flux (Flux transformer, real block "
                    "dimensions, fewer blocks), engine (demo-sd, tiny-flux), edits (demo-sd's edit measures), "
                    "serve (8 clients through the server, batching and caching)")
    ap.add_argument("--arches", default=None, help="UNet architectures of the unet part (default sd15; sdxl: "
                    "~10 GB of RAM in fp32)")
    ap.add_argument("--steps", type=int, default=None, help="steps of the unet and flux parts (default 30)")
    ap.add_argument("--flux-blocks", default="2,4", help="double,single blocks of the flux part (real: 19,38)")
    ap.add_argument("--flux-thresholds", type=float, nargs="*", default=None, help="default 0.05 0.2")
    ap.add_argument("--edit-side", type=int, default=128, help="side of the edits part (default 128)")
    ap.add_argument("--serve-model", default="demo-sd", help="model of the serve part (demo-sd, tiny-sd)")
    ap.add_argument("--serve-side", type=int, default=128, help="side of the serve part (default 128)")
    ap.add_argument("--window-s", type=float, default=20, help="the serve part's steady-state window per cell")
    ap.add_argument("--cycles", type=int, default=1, help="the serve part's cells, this many times in turn")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--intervals", type=int, nargs="*", default=None, help="DeepCache intervals (default 2 3 5)")
    ap.add_argument("--thresholds", type=float, nargs="*", default=None, help="fbcache thresholds (default 0.3 0.5)")
    args = ap.parse_args()
    if args.threads or args.quick:  # quick: a shared CPU's 2 OpenMP threads wait on each other
        torch.set_num_threads(args.threads or 1)
    parts = set(args.parts.split(","))
    px, steps = (64, 6) if args.quick else (256, 30)
    intervals = args.intervals if args.intervals is not None else [2, 3] if args.quick else [2, 3, 5]
    thresholds = args.thresholds if args.thresholds is not None else [0.5] if args.quick else [0.3, 0.5]
    deep = [StepCache(method="deepcache", interval=i) for i in intervals]
    fb = [StepCache(method="fbcache", threshold=t) for t in thresholds]
    print(f"bench/step_cache.py ({'quick' if args.quick else 'full'}; {torch.get_num_threads()} torch threads)")
    if "unet" in parts:
        for arch in (args.arches or ("sd15-small" if args.quick else "sd15")).split(","):
            unet_rows(arch, px, args.steps or steps, [3] if args.quick else intervals)
    if "flux" in parts:
        flux_thresholds = (args.flux_thresholds if args.flux_thresholds is not None else [0.5] if args.quick
                           else [0.05, 0.2])
        blocks = (1, 2) if args.quick else tuple(int(b) for b in args.flux_blocks.split(","))
        flux_rows(px, args.steps or steps, blocks, flux_thresholds, args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        engine = demo_engine(Path(tmp)) if parts & {"engine", "edits"} else None
        if "engine" in parts:
            engine_rows(engine, {"demo-sd": deep, **({"tiny-flux": fb} if fb else {})}, px, steps)
        if "edits" in parts:
            from diffserve.engine.demo import edits

            words = ["grayscale", "invert"] if args.quick else list(edits.EDITS)
            edit_rows(engine, 64 if args.quick else args.edit_side, 6 if args.quick else 30, 0.5,
                      [3] if args.quick else intervals, words)
    if "serve" in parts:
        serve_rows(args.serve_model, 64 if args.quick else args.serve_side, 4 if args.quick else 20,
                   2 if args.quick else 8, 0.5 if args.quick else args.window_s, 3, 1, 1 if args.quick else args.cycles)


if __name__ == "__main__":
    main()
