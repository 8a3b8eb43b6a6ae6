"""Cost of one request per tiny model family (build, load, generate), on this machine's CPU.

    .venv/bin/python bench/families_cost.py [--size 64] [--repeats 3] [--threads N] [--steps N] [--dtype auto] [--quick]

Each model is built into a temporary folder, loaded through the Engine, warmed up with one
request, then timed over `--repeats` requests at the model's default steps and guidance
(1 sample). Tiny models have random weights: this measures the serving path, not quality.
--quick (tests/test_benches.py runs it): 4 steps, 1 torch thread, one warm-up and one timed request per model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

MODELS = ("tiny-sd", "tiny-sdxl", "tiny-flux", "tiny-flux-kontext", "tiny-flux-redux")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="the Engine's dtype (engine/models/precision.py)")
    parser.add_argument("--steps", type=int, default=0, help="steps per request (0: the model's default)")
    parser.add_argument("--quick", action="store_true", help="--steps 4 --threads 1, 1 warm-up and 1 timed request")
    args = parser.parse_args()
    warmups, repeats = (1, 1) if args.quick else (2, args.repeats)
    if args.quick:
        args.steps, args.threads = args.steps or 4, args.threads or 1

    import numpy as np
    import torch
    from PIL import Image

    from diffserve.core.request import GenerationRequest
    from diffserve.engine.generate import TINY_BUILDERS, Engine
    from diffserve.engine.models.registry import ModelRegistry

    if args.threads:
        torch.set_num_threads(args.threads)
    init = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    print(f"torch threads {torch.get_num_threads()}, {args.size}x{args.size}, 1 sample, {args.steps or 'default'} steps, "
          f"dtype {args.dtype}")
    print(f"{'model':20} {'build s':>8} {'load s':>7} {'steps':>5} {'request s (median)':>19}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        registry = ModelRegistry.load(root / "none.json", root)
        engine = Engine(registry, max_models=1, dtype=args.dtype)
        for model_id in args.models:
            entry = registry.get(model_id)
            t0 = time.perf_counter()
            TINY_BUILDERS[model_id](root / model_id)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            engine.pipelines.get(model_id)
            load_s = time.perf_counter() - t0
            lim = entry.limits
            steps = args.steps or lim.default_steps
            req = GenerationRequest(model_id=model_id, prompt="a red fox in the snow", init_image_key="-",
                                    width=args.size, height=args.size, steps=steps,
                                    guidance_scale=lim.default_guidance, strength=lim.default_strength, seed=1)
            for _ in range(warmups):  # warm-up (first calls in a process pay one-off kernel setup)
                engine.generate(req, init)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                engine.generate(req, init)
                times.append(time.perf_counter() - t0)
            print(f"{model_id:20} {build_s:8.1f} {load_s:7.1f} {steps:5d} {statistics.median(times):19.3f}")


if __name__ == "__main__":
    main()
