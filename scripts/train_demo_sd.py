"""Train demo-sd: a small Stable Diffusion 1.x model (VAE, UNet, CLIP text encoder) that follows edit words.

    nice -n 10 .venv/bin/python scripts/train_demo_sd.py [--out diffserve/engine/demo/weights] [--seed 0]

Data: the sample photos bundled inside the installed scikit-image package (`skimage/data/`), only those
whose licence is stated as public domain or CC0 (TRAIN_IMAGES below; the held-out ones in
diffserve/engine/demo/data.py are never seen here). Recipe (the model card, diffserve/engine/demo/weights/README.md,
records the figures of the committed run):

1. the VAE (AutoencoderKL, 4x down, 4 latent channels) is *constructed*, not trained (construct_vae): an
   exact 4x average-pool encoder and a linear-interpolation decoder in its own layers, deterministic
   (sample() == mean). Trained autoencoders of this size reached 15-19 dB on the held-out photos in the
   time this machine allows; the construction reaches 27-28 dB and keeps colour exactly;
2. the latents of random 64 px crops (16x16 latents) and of their nine edits are cached;
3. the UNet and the text encoder together, as an *edit* model for SDEdit: the state at timestep t is the
   noised mix of the input's and the target's latents (img2img starts from the noised input; each
   denoising step moves the mix towards the prediction), and the model learns the noise that makes its
   x0 prediction the *goal*: above timestep 150 the target, below 25 the mix moved 0.3 of the rest of the
   way to it (edit_share; so that a low strength applies part of the edit), eps target =
   (x_t - sqrt(a_t) goal) / sqrt(1 - a_t), min-SNR-5 weighted, and each edit's rows weighted up the less
   that edit changes the latents (edit_weights, EDIT_BOOST) and by 1 / share.
   The caption names the edit (`apply` in diffserve/engine/demo/edits.py); the empty caption, random
   words and neutral phrases are trained as the identity, so an unknown prompt keeps the image; 40 % of
   the captions of both kinds get a few quality phrases appended (QUALITY: those the v6 prompt
   enhancement appends, and others), so that the enhancement keeps an edit.

Deterministic for a given seed, torch version and thread count (torch.use_deterministic_algorithms, one
seeded generator for the data and one for the noise, a fixed iteration count). The weights are written
in fp16; `training.json` beside them records the losses and the wall time of each stage.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffserve.engine.controls.prompts import QUALITY_TERMS  # noqa: E402
from diffserve.engine.demo import data as demo_data  # noqa: E402
from diffserve.engine.demo import edits  # noqa: E402
from diffserve.engine.tiny.sd import _sd15_scheduler, write_clip_tokenizer  # noqa: E402

NOUNS = ("cat", "dog", "person", "woman", "man", "city", "street", "tree", "house", "car", "mountain", "river",
         "flower", "astronaut", "rocket", "cup of coffee", "face", "landscape", "portrait", "room", "bird", "horse")
NEUTRAL = ("a photo", "a photo of a {n}", "women playing tennis", "a {n}", "high quality, detailed",
           "a picture of a {n} in the sun", "masterpiece", "{n}")
EDIT_TEMPLATES = ("{w}", "{w}", "{w}", "a {w} photo", "{w} photo of a {n}", "a {n}, {w}", "make it {w}",
                  "{w} style", "{w}, high quality")
# Quality phrases appended to QUALITY_P of the captions, edit and identity rows alike: the v6 page's prompt
# enhancement (on unless a request says "enhance_prompt": "no") appends QUALITY_TERMS to every prompt, and
# without these the appended words pulled an edit towards the identity (the model card: version 6 at strength
# 0.3, sepia 0.31-0.45 of its edit with the enhancement, against 0.64 without)
QUALITY = (*QUALITY_TERMS.split(", "), "masterpiece", "best quality", "4k", "detailed", "photo", "realistic")
QUALITY_P = 0.4


def build_vae():
    from diffusers import AutoencoderKL

    # 4x down (three blocks), 4 latent channels; its weights are set by construct_vae, not trained
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 16, 16),
                         layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=256,
                         mid_block_add_attention=False)


# ---- the autoencoder, constructed ---------------------------------------------------------------------
# Every channel c with c % 4 in (2, 3) is a constant CARRIER; channels 0-11 hold the pairs +S*v, -S*v of the
# colour v (R, G, B in [-1, 1]). A group of a GroupNorm then holds as many carriers as pairs, so its mean
# and spread do not depend on the picture (the pairs cancel in the mean, S*v is small beside the carriers):
# with the affine set to undo it, the norm passes the channels through, and since silu(x) - silu(-x) == x
# the pair passes silu exactly. Residual branches are zero (identity), downsamplers average 2x2, upsamplers
# are nearest-neighbour followed by a [1 2 1] smoothing (linear interpolation inside the picture).
CARRIER, SIGNAL = 1.0, 0.05
# an edit's loss weight: EDIT_REFERENCE (twice sepia's change) / its mean squared latent change, in [1, EDIT_WEIGHT_MAX]
EDIT_REFERENCE, EDIT_WEIGHT_MAX = 0.5, 4.0
# and a further factor for the edits that came out weak on a held-out photo with the weight above alone
# (grayscale on rocket, its blue sky kept, with the quality phrases: the model card, run q)
EDIT_BOOST = {"grayscale": 1.6}
# A low strength applies part of the edit: at a timestep below SHARE_RAMP[0] the target is the state's own mix
# of input and target moved SHARE_LOW of the rest of the way to the target, rising linearly to the whole
# target at SHARE_RAMP[1] (above it, the whole target). An ideal sampler then applies 1 - exp(-integral of the
# share over log sigma) of the edit: more the earlier it starts (the higher the strength); with these values
# most of it from strength 0.3 up, where the picture is still kept (version 5 ramped at timesteps 300-400,
# so that an edit was whole only at strengths that redraw the picture: the model card). Edits in WHOLE are
# always asked whole (a half-inverted picture is a grey one). An edit row's loss is weighted by 1 / share,
# so the small steps it asks at low noise keep their weight in the loss.
SHARE_LOW, SHARE_RAMP, WHOLE = 0.3, (25, 150), ("invert",)


def _is_carrier(channel: int) -> bool:
    return channel % 4 in (2, 3)


def _centre_identity(conv, n: int) -> None:
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    k = conv.weight.shape[-1] // 2
    for i in range(n):
        conv.weight[i, i, k, k] = 1.0


def _carriers(bias, start: int = 0) -> None:
    for c in range(start, bias.shape[0]):
        if _is_carrier(c):
            bias[c] = CARRIER


def _identity_resnet(block) -> None:
    block.conv2.weight.zero_()
    block.conv2.bias.zero_()
    if block.conv_shortcut is not None:
        _centre_identity(block.conv_shortcut, min(block.conv_shortcut.in_channels, block.conv_shortcut.out_channels))
        _carriers(block.conv_shortcut.bias, block.conv_shortcut.in_channels)


def _pass_through(norm) -> None:
    """The GroupNorm's affine undoes its own normalisation for the carrier/pair layout (out == in)."""
    size = norm.num_channels // norm.num_groups
    for g in range(norm.num_groups):
        channels = range(g * size, (g + 1) * size)
        share = sum(_is_carrier(c) for c in channels) / size
        mean = share * CARRIER
        std = (share * CARRIER ** 2 - mean ** 2 + norm.eps) ** 0.5
        for c in channels:
            norm.weight[c], norm.bias[c] = std, mean


def _colour_to_pairs(conv) -> None:
    """conv_in: RGB (or latents 0-2) into the pairs +-SIGNAL x colour, and the carriers."""
    k = conv.weight.shape[-1] // 2
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(3):
        conv.weight[4 * c, c, k, k], conv.weight[4 * c + 1, c, k, k] = SIGNAL, -SIGNAL
    _carriers(conv.bias)


def _pairs_to_colour(conv) -> None:
    """conv_out: each pair back to its colour (silu(x) - silu(-x) == x, divided by SIGNAL); the rest zero."""
    k = conv.weight.shape[-1] // 2
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(3):
        conv.weight[c, 4 * c, k, k], conv.weight[c, 4 * c + 1, k, k] = 1 / SIGNAL, -1 / SIGNAL


@torch.no_grad()
def construct_vae(vae) -> None:
    """An exact 4x average-pool encoder (latents 0-2 = each 4x4 block's mean R, G, B; latent 3 = 0) and a
    linear-interpolation decoder, in AutoencoderKL's own layers: colour is kept exactly, detail finer than
    4 px is lost. Gradient training of this VAE on the permitted photos reached only 15-19 dB on the
    held-out photos in the time budget (the model card); this construction gives 27-28 dB."""
    enc, dec = vae.encoder, vae.decoder
    for module in (enc, dec):
        for block in [*getattr(module, "down_blocks", []), *getattr(module, "up_blocks", []), module.mid_block]:
            for resnet in block.resnets:
                _identity_resnet(resnet)
    _colour_to_pairs(enc.conv_in)
    for block in enc.down_blocks:
        for down in block.downsamplers or []:  # padded (0, 1, 0, 1), stride 2: taps (0..1, 0..1) = the 2x2 block
            down.conv.weight.zero_()
            down.conv.bias.zero_()
            for i in range(down.conv.out_channels):
                down.conv.weight[i, i, :2, :2] = 0.25
    _pass_through(enc.conv_norm_out)
    _pairs_to_colour(enc.conv_out)
    enc.conv_out.bias[4:] = -30.0  # log-variance: the posterior is deterministic, sample() == mean
    _centre_identity(vae.quant_conv, 4)
    vae.quant_conv.bias[4:] = -30.0
    _centre_identity(vae.post_quant_conv, 4)
    _colour_to_pairs(dec.conv_in)
    smooth = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    for block in dec.up_blocks:
        for up in block.upsamplers or []:
            _centre_identity(up.conv, up.conv.out_channels)
            for i in range(12):
                up.conv.weight[i, i] = smooth
    _pass_through(dec.conv_norm_out)
    _pairs_to_colour(dec.conv_out)


def build_unet():
    from diffusers import UNet2DConditionModel

    # SD 1.x's blocks, narrowed, one layer per block; cross-attention at 1/2 and 1/4 of the latent size
    # (not at full size: latents are 1/4 of the picture, and attention over 64x64 tokens is slow on a CPU)
    return UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(64, 96, 128),
                                layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)


# The UNet's guidance input (diffusers' time_cond_proj_dim, as in guidance-distilled LCM UNets). Its projection
# is zero, so the guidance scale changes nothing; having it makes every diffusers pipeline skip classifier-free
# guidance, which overshoots this model's edits (measured: -5.3 dB at guidance 7.5, the v6 clients' usual value).
GUIDANCE_EMBEDDING_DIM = 64


def guidance_free(unet):
    """`unet` with a guidance input whose projection is zero: the same outputs, run without CFG."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in unet.config.items() if k != "_use_default_values"}  # it would reset the new key
    free = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": GUIDANCE_EMBEDDING_DIM})
    missing, unexpected = free.load_state_dict(unet.state_dict(), strict=False)
    assert missing == ["time_embedding.cond_proj.weight"] and not unexpected, (missing, unexpected)
    with torch.no_grad():
        free.time_embedding.cond_proj.weight.zero_()
    return free.to(unet.dtype).eval().requires_grad_(False)


def shipped_scheduler(trained):
    """The folder's default scheduler: Euler on the training betas. Measured on the held-out photos at strength
    0.6, 20 steps, no CFG (bench/demo_quality.py): a mean edit gain of +2.20 dB and the neutral prompt's output
    20.2 dB from the input, against +1.81 / 19.4 with SD 1.5's PNDM and +0.73 / 19.1 with DDIM."""
    from diffusers import EulerDiscreteScheduler

    pndm_only = ("skip_prk_steps", "set_alpha_to_one")  # kept in the config, they would warn on every switch
    return EulerDiscreteScheduler.from_config({k: v for k, v in trained.config.items() if k not in pndm_only})


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffserve.engine.tiny.sd import CLIP_MAX_LENGTH, CLIP_VOCAB_SIZE

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- data ---------------------------------------------------------------------------------------------


def pyramid(images: list[np.ndarray], min_side: int) -> list[np.ndarray]:
    """Each image at a few scales (short side from min_side to full): crops then see objects at many sizes."""
    from PIL import Image

    levels = []
    for image in images:
        short = min(image.shape[:2])
        for side in sorted({min_side, int(short * 0.45), int(short * 0.7), short}):
            if side < min_side or side > short:
                continue
            pil = edits.to_pil(image)
            w, h = pil.size
            pil = pil.resize((max(side, round(w * side / short)), max(side, round(h * side / short))),
                             Image.LANCZOS)
            levels.append(edits.from_pil(pil))
    return levels


def random_crop(rng: np.random.Generator, levels: list[np.ndarray], size: int) -> np.ndarray:
    image = levels[rng.integers(len(levels))]
    h, w = image.shape[:2]
    y, x = rng.integers(h - size + 1), rng.integers(w - size + 1)
    crop = image[y:y + size, x:x + size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:  # colour variety from few colour photos: permute the channels
        crop = crop[..., rng.permutation(3)]
    if rng.random() < 0.3:  # and vary the saturation
        gray = crop.mean(axis=-1, keepdims=True)
        crop = np.clip(gray + (crop - gray) * rng.uniform(0.3, 1.6), 0.0, 1.0)
    return np.ascontiguousarray(crop, dtype=np.float32)


def to_tensor(batch: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2) * 2.0 - 1.0


def caption(rng: np.random.Generator, word: str | None, random_ids: np.ndarray, tokenizer) -> str:
    text = _caption(rng, word, random_ids, tokenizer)
    if rng.random() >= QUALITY_P:
        return text
    terms = rng.choice(len(QUALITY), size=int(rng.integers(1, 7)), replace=False)
    return ", ".join([text, *(QUALITY[i] for i in terms)] if text else [QUALITY[i] for i in terms])


def _caption(rng: np.random.Generator, word: str | None, random_ids: np.ndarray, tokenizer) -> str:
    noun = NOUNS[rng.integers(len(NOUNS))]
    if word is not None:
        return EDIT_TEMPLATES[rng.integers(len(EDIT_TEMPLATES))].format(w=word, n=noun)
    kind = rng.integers(3)
    if kind == 0:
        return ""
    if kind == 1:
        return NEUTRAL[rng.integers(len(NEUTRAL))].format(n=noun)
    ids = rng.choice(random_ids, size=int(rng.integers(1, 7)))
    return tokenizer.decode(ids.tolist())


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


# ---- stages -------------------------------------------------------------------------------------------


@torch.no_grad()
def cache_latents(vae, levels, rng, args, report) -> dict[str, torch.Tensor]:
    start = time.time()
    words = ["identity", *edits.EDITS]
    latents = {w: [] for w in words}
    for first in range(0, args.crops, 32):
        crops = [random_crop(rng, levels, args.crop) for _ in range(min(32, args.crops - first))]
        for w in words:
            images = crops if w == "identity" else [edits.apply(w, c).astype(np.float32) for c in crops]
            latents[w].append(vae.encode(to_tensor(images)).latent_dist.mean)
    out = {w: torch.cat(v) for w, v in latents.items()}
    scale = float(1.0 / out["identity"].std())
    report["latents"] = {"crops": args.crops, "crop": args.crop, "scaling_factor": round(scale, 5),
                         "wall_s": round(time.time() - start, 1)}
    log(f"cached {args.crops} x {len(words)} latents in {time.time() - start:.0f} s, scaling {scale:.4f}")
    return {w: v * scale for w, v in out.items()}, scale


def edit_weights(cache: dict[str, torch.Tensor], report: dict) -> dict[str, float]:
    """Each edit's loss weight: EDIT_REFERENCE over the mean squared latent change it makes, between 1 and
    EDIT_WEIGHT_MAX. Unweighted, the edits that change the latents least (posterize 0.06 before it had outlines,
    and blur and sharpen at their former 2.5 / 1.5 px: 0.02 / 0.009, against sepia's 0.25 and invert's 4.4)
    were not learned at all: their share of the loss was too small."""
    change = {w: float((cache[w] - cache["identity"]).pow(2).mean()) for w in edits.EDITS}
    weights = {w: min(EDIT_WEIGHT_MAX, max(1.0, EDIT_REFERENCE / max(c, 1e-6))) * EDIT_BOOST.get(w, 1.0)
               for w, c in change.items()}
    report["edit_weights"] = {w: {"latent_change": round(change[w], 4), "weight": round(weights[w], 3)}
                              for w in edits.EDITS}
    log("edit weights " + ", ".join(f"{w} {v:.2f}" for w, v in weights.items()))
    return weights


def edit_share(t: torch.Tensor) -> torch.Tensor:
    """The share of the edit still missing that a timestep's target asks for (SHARE_LOW .. 1)."""
    ramp = ((t.float() - SHARE_RAMP[0]) / (SHARE_RAMP[1] - SHARE_RAMP[0])).clamp(0.0, 1.0)
    return SHARE_LOW + (1.0 - SHARE_LOW) * ramp


def train_unet(unet, text_encoder, tokenizer, scheduler, cache, rng, args, report) -> None:
    gen = torch.Generator().manual_seed(args.seed + 1)
    weights = edit_weights(cache, report)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.0)
    alphas = scheduler.alphas_cumprod.float()
    words = list(edits.EDITS)
    vocab_words = list(edits.VOCABULARY)
    banned = set()
    for w in vocab_words:
        banned.update(tokenizer(w, add_special_tokens=False).input_ids)
    random_ids = np.array([i for i in range(49406) if i not in banned])
    n = cache["identity"].shape[0]
    unet.train()
    text_encoder.train()
    start, losses = time.time(), []
    for step in range(args.unet_steps):
        index = torch.from_numpy(rng.integers(n, size=args.unet_batch))
        chosen = [None if rng.random() < args.identity_p else words[rng.integers(len(words))]
                  for _ in range(args.unet_batch)]
        named = [w if w is None or rng.random() > 0.15 else
                 next((s for s, e in edits.SYNONYMS.items() if e == w), w) for w in chosen]
        z_in = cache["identity"][index]
        z_tgt = torch.stack([cache[w or "identity"][i] for w, i in zip(chosen, index.tolist())])
        lam = torch.from_numpy(np.where(rng.random(args.unet_batch) < 0.5, 0.0,
                                        rng.random(args.unet_batch)).astype(np.float32)).view(-1, 1, 1, 1)
        mix = z_in + lam * (z_tgt - z_in)
        t = torch.randint(0, 1000, (args.unet_batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noise = torch.randn(z_in.shape, generator=gen)
        x_t = a.sqrt() * mix + (1 - a).sqrt() * noise
        partial = torch.tensor([w is not None and w not in WHOLE for w in chosen]).view(-1, 1, 1, 1)
        share = torch.where(partial, edit_share(t).view(-1, 1, 1, 1), torch.ones(()))
        goal = mix + share * (z_tgt - mix)
        eps_target = (x_t - a.sqrt() * goal) / (1 - a).sqrt()
        snr = a / (1 - a)
        row_weight = torch.tensor([1.0 if w is None else weights[w] for w in chosen]).view(-1, 1, 1, 1) / share
        weight = row_weight * torch.clamp(snr, max=5.0) / snr
        texts = [caption(rng, w, random_ids, tokenizer) for w in named]
        ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.unet_steps, args.unet_lr, 50)
        hidden = text_encoder(ids)[0]
        eps = unet(x_t, t, hidden).sample
        # min-SNR-5: the rows whose state is the input and target another picture have eps targets that grow
        # as 1 / sqrt(1 - a_t) at low noise; unweighted, training diverges
        loss = (weight * (eps - eps_target).pow(2)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.unet_steps - 1:
            log(f"unet {step}/{args.unet_steps} loss {np.mean(losses[-50:]):.4f}")
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    report["unet"] = {"steps": args.unet_steps, "batch": args.unet_batch, "identity_p": args.identity_p,
                      "lr": args.unet_lr,
                      "edit_share": {"low": SHARE_LOW, "ramp_timesteps": list(SHARE_RAMP), "whole": list(WHOLE)},
                      "quality_phrases": {"p": QUALITY_P, "phrases": list(QUALITY)}, "edit_boost": EDIT_BOOST,
                      "final_loss_min_snr5_eps": round(float(np.mean(losses[-50:])), 5),
                      "wall_s": round(time.time() - start, 1)}


# ---- main ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "diffserve" / "engine" / "demo" / "weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crops", type=int, default=1536)
    parser.add_argument("--crop", type=int, default=64, help="crop side in px (latents are a quarter of it)")
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--unet-batch", type=int, default=24)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--identity-p", type=float, default=0.2)
    args = parser.parse_args(argv)

    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    began = time.time()
    report: dict = {"seed": args.seed, "threads": args.threads, "torch": torch.__version__,
                    "train_images": list(demo_data.TRAIN_IMAGES), "held_out": list(demo_data.HELD_OUT)}

    levels = pyramid([demo_data.load(name) for name in demo_data.TRAIN_IMAGES], min_side=160)
    log(f"{len(demo_data.TRAIN_IMAGES)} training images, {len(levels)} scales")
    vae, unet, text_encoder = build_vae(), build_unet(), build_text_encoder()
    for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        report.setdefault("parameters", {})[name] = sum(p.numel() for p in module.parameters())
    log(f"parameters {report['parameters']}")
    scheduler = _sd15_scheduler()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_clip_tokenizer(Path(tmp) / "tokenizer")
        construct_vae(vae)
        report["vae"] = {"constructed": "4x average-pool encoder, linear-interpolation decoder (construct_vae)"}
        cache, scale = cache_latents(vae, levels, rng, args, report)
        vae.register_to_config(scaling_factor=scale)
        train_unet(unet, text_encoder, tokenizer, scheduler, cache, rng, args, report)
        report["wall_s"] = round(time.time() - began, 1)

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       unet=guidance_free(unet), scheduler=shipped_scheduler(scheduler),
                                       safety_checker=None, feature_extractor=None,
                                       image_encoder=None, requires_safety_checker=False)
        staged = Path(tmp) / "pipe"
        pipe.to(torch.float16).save_pretrained(str(staged), safe_serialization=True)
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        for part in ("unet", "vae", "text_encoder", "scheduler"):
            shutil.rmtree(out / part, ignore_errors=True)
            shutil.copytree(staged / part, out / part)
        shutil.copy(staged / "model_index.json", out / "model_index.json")
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"done in {report['wall_s']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
