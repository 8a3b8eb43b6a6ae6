"""demo-sd's quality on the held-out photos, as tables: content kept and each edit's effect, per strength.

    .venv/bin/python bench/demo_quality.py [--side 256] [--steps 8] [--guidance 1.0] [--dtype fp32] [--quick]

Builds demo-sd's folder from the package weights (in a temp dir), runs diffusers' img2img pipeline on the
CPU on each held-out photo (diffserve/engine/demo/data.py: never seen in training) and prints:

1. the VAE alone (encode + decode): the ceiling of every PSNR below;
2. per prompt and strength (0.3 / 0.5 / 0.7): PSNR and SSIM of the output to the input and to the edit's
   target, the gains (dB the output came closer to the target than the input was, and than the neutral
   prompt's output is: quality.word_gain) and the edit's own measure (neutral output -> output;
   diffserve/engine/demo/quality.py EFFECTS); then how much of each edit is applied per strength
   (0.2 / 0.3 / 0.5 / 0.7 / 0.9: quality.edit_amount), at the model's steps, at 20, and with the ModelsLab v6
   page's defaults (Karras sigmas and prompt enhancement, on unless a request switches them off);
3. guidance, scheduler and v6-default variants at the model's default strength (mean target gain over the edits);
4. load and per-image times;
5. with --dtype bf16 (or fp16): each output of the tables against the same output made in float32 (PSNR), and the
   float32 per-image time.
Figures are means over the held-out photos; one seed. --quick (tests/test_benches.py runs it): 64 px unless --side
says otherwise, strength 0.5 only, no variants.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffserve.engine.controls.prompts import enhance as enhanced  # noqa: E402
from diffserve.engine.demo import edits, quality  # noqa: E402
from diffserve.engine.demo.build import WEIGHTS, build_demo_sd  # noqa: E402

REFERENCE = "women playing tennis"  # the neutral prompt each edit is compared with
NEUTRAL = (REFERENCE, "", "a photo of a cat")


def figure(value: float) -> str:
    """A measure with three decimals, four below 0.1 (blur and sharpen move the high-frequency energy
    around 0.005)."""
    return f"{value:.3f}" if abs(value) >= 0.1 else f"{value:.4f}"


def row(cells, widths) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))


def save_pictures(generate: Callable[[str, float], np.ndarray], image: np.ndarray, folder: Path) -> None:
    """The README's pictures of `image`: itself, sepia and sketch at the default strength, and a strip of both
    words at strength 0.2 / 0.3 / 0.5 / 0.7 / 0.9 (a row each, 128 px cells). generate(word, strength): the output."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    edits.to_pil(image).save(folder / "demo-input.jpg", quality=90)
    strengths, words, cell = (0.2, 0.3, 0.5, 0.7, 0.9), ("sepia", "sketch"), 128
    strip = Image.new("RGB", (cell * len(strengths), cell * len(words)))
    for row_index, word in enumerate(words):
        edits.to_pil(generate(word, quality.DEFAULT_STRENGTH)).save(folder / f"demo-{word}.jpg", quality=90)
        for column, strength in enumerate(strengths):
            out = edits.to_pil(generate(word, strength)).resize((cell, cell), Image.LANCZOS)
            strip.paste(out, (cell * column, cell * row_index))
    strip.save(folder / "demo-strengths.jpg", quality=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=None, help="default 256 (--quick: 64)")
    parser.add_argument("--steps", type=int, default=quality.DEFAULT_STEPS, help="default: the model's")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="64 px, strength 0.5 only, no variants")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="the pipeline's type; other than fp32: section 5 compares each output with fp32's")
    parser.add_argument("--weights", type=Path, default=WEIGHTS, help="a weights folder (default: the package's)")
    parser.add_argument("--save", type=Path, help="also write the README's example pictures (save_pictures)")
    parser.add_argument("--pictures-only", action="store_true", help="with --save: write the pictures and stop")
    args = parser.parse_args(argv)
    args.side = args.side or (64 if args.quick else 256)

    import torch

    from diffserve.engine.models.precision import TORCH_NAMES

    torch.set_num_threads(1 if args.quick else 2)  # quick: a shared CPU's 2 OpenMP threads wait on each other
    images = quality.held_out_images(args.side)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = build_demo_sd(Path(tmp) / "demo-sd", args.weights)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipe = quality.load_pipeline(folder, TORCH_NAMES[args.dtype])
        loaded = time.perf_counter() - t0
        reference = quality.load_pipeline(folder) if args.dtype != "fp32" else None
    print(f"demo-sd: folder built in {built:.2f} s, pipeline loaded in {loaded:.2f} s; held out: "
          f"{', '.join(images)} at {args.side}x{args.side}; steps {args.steps}, guidance {args.guidance}, seed 0, "
          f"{args.dtype}\n")

    timings, outputs = [], {}

    def output(prompt: str, name: str, strength: float, steps: int = args.steps, guidance: float = args.guidance,
               scheduler: str | None = None, karras: bool = False, enhance: bool = False) -> np.ndarray:
        """The output for a prompt, photo, strength and options, made once (seed 0) and shared by every section;
        `timings` gets the time of each one made with the run's steps and guidance and the folder's scheduler.
        enhance: the prompt as the v6 page's prompt enhancement rewrites it (on unless a request says no)."""
        key = (prompt, name, strength, steps, guidance, scheduler, karras, enhance)
        if key not in outputs:
            t0 = time.perf_counter()
            sent = enhanced(prompt, None, enhance_prompt=True, style=None)[0] if enhance else prompt
            outputs[key] = quality.generate(pipe, images[name], sent, strength=strength, steps=steps,
                                            guidance=guidance, scheduler=scheduler, karras=karras)
            if (steps, guidance, scheduler, karras, enhance) == (args.steps, args.guidance, None, False, False):
                timings.append(time.perf_counter() - t0)
        return outputs[key]

    if args.save:
        # as the README's v6 request makes them: the page's prompt enhancement on (its default), Karras sigmas off
        save_pictures(lambda word, strength: output(word, "chelsea", strength, enhance=True), images["chelsea"],
                      args.save)
        print(f"example pictures written to {args.save}\n")
        if args.pictures_only:
            return 0

    print("1. VAE alone (encode + decode)")
    for name, image in images.items():
        recon = quality.reconstruct(pipe, image)
        print(f"   {name:8s} PSNR {edits.psnr(recon, image):5.2f} dB  SSIM {quality.ssim(recon, image):.3f}")

    strengths = (0.5,) if args.quick else (0.3, 0.5, 0.7)
    widths = (22, 4, 8, 8, 9, 9, 9, 9, 28, 26)
    print("\n2. Per prompt and strength (means over the held-out photos). gain in / gain neutral: dB the output is"
          "\n   closer to the edit's target than the input / than the neutral prompt's output "
          f"({REFERENCE!r}, same seed);\n   the measure: neutral output -> this output")
    print(row(("prompt", "str", "PSNR in", "SSIM in", "PSNR tgt", "SSIM tgt", "gain in", "gain neu", "measure",
               "neutral -> output"), widths))
    for prompt in (*NEUTRAL, *edits.EDITS, "cartoon"):
        for strength in strengths:
            figures, measure = [], []
            for name, image in images.items():
                out, neutral = output(prompt, name, strength), output(REFERENCE, name, strength)
                word = edits.SYNONYMS.get(prompt, prompt)
                target = edits.apply(word, image) if word in edits.EDITS else image
                edited = word in edits.EDITS
                figures.append((edits.psnr(out, image), quality.ssim(out, image), edits.psnr(out, target),
                                quality.ssim(out, target), quality.target_gain(word, image, out) if edited else 0.0,
                                quality.word_gain(word, image, neutral, out) if edited else 0.0))
                if edited:
                    effect = quality.EFFECTS[word]
                    measure.append((effect.value(neutral, neutral), effect.value(neutral, out)))
            m = np.mean(figures, axis=0)
            label = quality.EFFECTS[edits.SYNONYMS.get(prompt, prompt)].name if measure else "-"
            moved = (f"{figure(np.mean([a for a, _ in measure]))} -> {figure(np.mean([b for _, b in measure]))}"
                     if measure else "-")
            print(row((repr(prompt), strength, f"{m[0]:.2f}", f"{m[1]:.3f}", f"{m[2]:.2f}", f"{m[3]:.3f}",
                       f"{m[4]:+.2f}", f"{m[5]:+.2f}", label, moved), widths))

    if not args.quick:
        amounts = (0.2, 0.3, 0.5, 0.7, 0.9)
        print("\n2b. How much of each edit is applied, per strength: the output's change from the neutral prompt's "
              "output\n    projected on the exact edit's change (quality.edit_amount; 1 = all of it), means over "
              f"the held-out photos; at {args.steps} steps, at 20, and at {args.steps} with the v6 page's defaults "
              "(v6: Karras sigmas and prompt enhancement)")
        widths_2b = (22, 8, *(9,) * len(amounts))
        print(row(("prompt", "steps", *(f"str {a}" for a in amounts)), widths_2b))
        for word in edits.EDITS:
            for steps, paged in ((args.steps, False), (20, False), (args.steps, True)):
                cells = [np.mean([quality.edit_amount(
                    word, image, output(REFERENCE, name, a, steps=steps, karras=paged, enhance=paged),
                    output(word, name, a, steps=steps, karras=paged, enhance=paged))
                    for name, image in images.items()]) for a in amounts]
                print(row((repr(word), f"{steps} v6" if paged else steps, *(f"{c:.2f}" for c in cells)), widths_2b))

        print(f"\n3. Variants at strength {quality.DEFAULT_STRENGTH} (the default) unless named: mean gain over the "
              "neutral output of the nine edits (dB), and the "
              f"neutral prompt's ({REFERENCE!r}) PSNR to the input; 'v6 page defaults': Karras sigmas and prompt "
              "enhancement, what a ModelsLab v6 request gets unless it switches them off")
        # demo-sd runs without classifier-free guidance (its UNet's guidance input: the model card), so a
        # guidance of 7.5 (the v6 clients' usual value) must give what 1.0 gives
        variants = [("guidance 1.0", {"guidance": 1.0}), ("guidance 7.5", {"guidance": 7.5}),
                    ("steps 4", {"steps": 4}), ("steps 20", {"steps": 20}), ("steps 40", {"steps": 40}),
                    ("DPM++ 2M", {"scheduler": "DPMSolverMultistepScheduler"}),
                    ("Euler", {"scheduler": "EulerDiscreteScheduler"}), ("DDIM", {"scheduler": "DDIMScheduler"}),
                    ("Euler a", {"scheduler": "EulerAncestralDiscreteScheduler"}),
                    ("realtime: LCM 4 steps, guidance 1", {"scheduler": "LCMScheduler", "steps": 4, "guidance": 1.0}),
                    ("prompt enhancement", {"enhance": True}), ("Karras sigmas", {"karras": True}),
                    ("v6 page defaults", {"karras": True, "enhance": True}),
                    ("v6 page defaults, strength 0.5", {"karras": True, "enhance": True, "strength": 0.5}),
                    ("v6 page defaults, strength 0.7", {"karras": True, "enhance": True, "strength": 0.7})]
        for label, change in variants:
            options = {"steps": args.steps, "guidance": args.guidance, "strength": quality.DEFAULT_STRENGTH, **change}
            gains, kept = [], []
            for name, image in images.items():
                base = output(REFERENCE, name, **options)
                kept.append(edits.psnr(base, image))
                for word in edits.EDITS:
                    gains.append(quality.word_gain(word, image, base, output(word, name, **options)))
            print(f"   {label:34s} gain {np.mean(gains):+.2f} dB (min {np.min(gains):+.2f})   "
                  f"neutral PSNR to input {np.mean(kept):.2f} dB")

    print(f"\n4. {len(timings)} generations: {np.mean(timings):.2f} s each on average "
          f"({args.side}x{args.side}, {args.steps} steps x strength, {args.dtype})")
    if reference is not None:
        compare_dtype(reference, images, outputs, np.mean(timings), args.dtype)
    return 0


def compare_dtype(reference, images: dict, outputs: dict, mean_s: float, dtype: str) -> None:
    """Section 5: every output made above, made again by the float32 pipeline `reference`: PSNR to it, and the
    per-image time of the float32 runs of the run's own settings."""
    from diffserve.engine.controls.prompts import enhance as enhanced

    psnrs, timings = [], []
    for (prompt, name, strength, steps, guidance, scheduler, karras, enhance), out in outputs.items():
        sent = enhanced(prompt, None, enhance_prompt=True, style=None)[0] if enhance else prompt
        t0 = time.perf_counter()
        ref = quality.generate(reference, images[name], sent, strength=strength, steps=steps, guidance=guidance,
                               scheduler=scheduler, karras=karras)
        timings.append(time.perf_counter() - t0)
        psnrs.append(edits.psnr(out, ref))
    print(f"\n5. {dtype} against fp32, the same {len(psnrs)} outputs: PSNR mean {np.mean(psnrs):.2f} dB, "
          f"min {np.min(psnrs):.2f} dB; per image {mean_s:.2f} s ({dtype}) vs {np.mean(timings):.2f} s (fp32): "
          f"{np.mean(timings) / mean_s:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
