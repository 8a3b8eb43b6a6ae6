"""Generation controls on the tiny Stable Diffusion model, through Engine.generate (no server).

Each control is shown to act (different images where it should change them) and to leave no
trace (byte-identical images where it should not: the request after a swap equals one that never
swapped, clip_skip=1 equals no clip_skip, safety_checker=no equals an unchecked image...).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from diffserve.core.errors import GenerationFailed, InvalidInput
from diffserve.core.request import ALGORITHM_TYPES, GenerationRequest, RequestDraft
from diffserve.core.request import SCHEDULERS as VENDOR_SCHEDULERS
from diffserve.engine.controls import prompts
from diffserve.engine.models.capabilities import ALGORITHM_TYPES as ENGINE_ALGORITHMS
from diffserve.engine.models.capabilities import SCHEDULERS, UNSUPPORTED_SCHEDULERS
from diffserve.engine.models.specs import FAMILIES
from diffserve.engine.generate import Engine
from diffserve.engine.models.registry import ModelEntry, ModelRegistry
from diffserve.engine.request_rules import model_scheduler_name, resolve_controls
from diffserve.engine.controls.safety import SHARED_KEY, SafetyCheckers, obscure
from diffserve.engine.controls.tome import transformer_blocks

# diffusers' schedulers hand torch tensors to numpy 2 thousands of times per run: silence that noise.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 32
INIT = Image.new("RGB", (SIZE, SIZE), (200, 80, 40))
for _x in range(SIZE):
    INIT.putpixel((_x, SIZE // 2), (_x * 8, 0, 255 - _x * 8))

# The enhance_style list of the ModelsLab v6 img2img page, as printed there (duplicates included).
VENDOR_STYLES = """enhance, cinematic-diva, nude, nsfw, sex, abstract-expressionism, academia, action-figure,
adorable-3d-character, adorable-kawaii, art-deco, art-nouveau, astral-aura, avant-garde, baroque, bauhaus-style-poster,
blueprint-schematic-drawing, caricature, cel-shaded-art, character-design-sheet, classicism-art, color-field-painting,
colored-pencil-art, conceptual-art, constructivism, cubism, dadaism, dark-fantasy, dark-moody-atmosphere, dmt-art,
doodle-art, double-exposure, dripping-paint-splatter, expressionism, faded-polaroid-photo, fauvism, flat-2d,
fortnite-style, futurism, glitchcore, glo-fi, googie-style, graffiti-art, harlem-renaissance-art, high-fashion, idyllic,
impressionism, infographic-drawing, ink-dripping-drawing, japanese-ink-drawing, knolling-photography,
light-cheery-atmosphere, logo-design, luxurious-elegance, macro-photography, mandola-art, marker-drawing, medievalism,
minimalism, neo-baroque, neo-byzantine, neo-futurism, neo-impressionism, neo-rococo, neoclassicism, op-art,
ornate-and-intricate, pencil-sketch-drawing, pop-art-2, rococo, silhouette-art, simple-vector-art, sketchup,
steampunk-2, surrealism, suprematism, terragen, tranquil-relaxing-atmosphere, sticker-designs, vibrant-rim-light,
volumetric-lighting, watercolor, whimsical-and-playful, sharp, masterpiece, photograph, negative, cinematic,
ads-advertising, ads-automotive, ads-corporate, ads-fashion-editorial, ads-food-photography,
ads-gourmet-food-photography, ads-luxury, ads-real-estate, ads-retail, abstract, abstract-expressionism, art-deco,
art-nouveau, constructivist, cubist, expressionist, graffiti, hyperrealism, impressionist, pointillism, pop-art,
psychedelic, renaissance, steampunk, surrealist, typography, watercolor, futuristic-biomechanical,
futuristic-biomechanical-cyberpunk, futuristic-cybernetic, futuristic-cybernetic-robot, futuristic-cyberpunk-cityscape,
futuristic-futuristic, futuristic-retro-cyberpunk, futuristic-retro, futuristic-sci-fi, futuristic-vaporwave,
game-bubble, game-cyberpunk, game-fighting, game-gta, game-mario, game-minecraft, game-pokemon, game-retro-arcade,
game-retro, game-rpg-fantasy, game-strategy, game-streetfighter, game-zelda, misc-architectural, misc-disco,
misc-dreamscape, misc-dystopian, misc-fairy-tale, misc-gothic, misc-grunge, misc-horror, misc-kawaii, misc-lovecraftian,
misc-macabre, misc-manga, misc-metropolis, misc-minimalist, misc-monochrome, misc-nautical, misc-space,
misc-stained-glass, misc-techwear-fashion, misc-tribal, misc-zentangle, papercraft-collage, papercraft-flat-papercut,
papercraft-kirigami, papercraft-paper-mache, papercraft-paper-quilling, papercraft-papercut-collage,
papercraft-papercut-shadow-box, papercraft-stacked-papercut, papercraft-thick-layered-papercut, photo-alien,
photo-film-noir, photo-glamour, photo-hdr, photo-iphone-photographic, photo-long-exposure, photo-neon-noir,
photo-silhouette, photo-tilt-shift, 3d-model, analog-film, anime, cinematic, comic-book, craft-clay, digital-art,
fantasy-art, isometric, line-art, lowpoly, neonpunk, origami, photographic, pixel-art, texture"""


@pytest.fixture(scope="module")
def registry(models_root):
    return ModelRegistry.load(models_root / "no-models.json", models_root)


@pytest.fixture(scope="module")
def engine(registry, models_root, one_torch_thread):
    return Engine(registry, models_dir=models_root)


@pytest.fixture(scope="module")
def flag_all(models_root):
    """The test checker that flags every image (loaded once for the module)."""
    return SafetyCheckers("tiny-flag-all", models_dir=models_root)


@pytest.fixture
def flagging_engine(engine, flag_all):
    """The same engine (same loaded pipeline) with the flag-everything checker, for one test."""
    own = engine.shared[SHARED_KEY]
    engine.shared[SHARED_KEY] = flag_all
    yield engine
    engine.shared[SHARED_KEY] = own


def request(**over) -> GenerationRequest:
    fields = dict(model_id="tiny-sd", prompt="a red bicycle", init_image_key="unused", width=SIZE, height=SIZE,
                  steps=4, guidance_scale=7.5, strength=0.7, seed=1234)
    fields.update(over)
    return GenerationRequest(**fields)


def images(engine: Engine, **over) -> tuple[list[bytes], list[bool]]:
    result = engine.generate(request(**over), INIT)
    return result.png_bytes(), result.nsfw


def png(engine: Engine, **over) -> bytes:
    return images(engine, **over)[0][0]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def draft(**over) -> RequestDraft:
    fields = dict(model_id="tiny-sd", prompt="a red bicycle", init_image="unused")
    fields.update(over)
    return RequestDraft(**fields)


@pytest.fixture(scope="module")
def base(engine) -> bytes:
    return png(engine)


# --------------------------------------------------------------------------------------------
# scheduler, use_karras_sigmas, algorithm_type
# --------------------------------------------------------------------------------------------


def test_vocabularies_agree_with_the_vendor_page():
    assert set(SCHEDULERS) | set(UNSUPPORTED_SCHEDULERS) == set(VENDOR_SCHEDULERS)
    assert not set(SCHEDULERS) & set(UNSUPPORTED_SCHEDULERS)
    assert set(ENGINE_ALGORITHMS) == set(ALGORITHM_TYPES)


def test_every_supported_scheduler_is_applied_and_put_back(engine, base):
    pipe = engine.pipelines.get("tiny-sd").pipe
    original = pipe.scheduler
    loads = engine.pipelines.loads
    outputs = {}
    for name in SCHEDULERS:  # 6 steps (4 run at strength 0.7): with fewer, UniPC and DPM-Solver are both order 1
        outputs[name] = png(engine, scheduler=name, steps=6)
        assert pipe.scheduler is original, name  # swapped for the call only
    assert type(original).__name__ == "PNDMScheduler"
    assert outputs["PNDMScheduler"] == png(engine, steps=6)  # the model's own scheduler: the same object runs
    assert len(set(outputs.values())) == len(SCHEDULERS)  # each one gives its own image
    assert engine.pipelines.loads == loads  # no reload
    assert png(engine) == base  # nothing bled into the next request


def test_karras_sigmas_change_the_image_only_where_the_scheduler_takes_them(engine):
    assert png(engine, scheduler="EulerDiscreteScheduler", use_karras_sigmas=True) != \
        png(engine, scheduler="EulerDiscreteScheduler")
    assert not SCHEDULERS["DDIMScheduler"].karras
    assert png(engine, scheduler="DDIMScheduler", use_karras_sigmas=True) == png(engine, scheduler="DDIMScheduler")


@pytest.mark.parametrize("scheduler", ["DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_algorithm_type_vendor_value_means_sde_dpmsolver(engine, scheduler):
    plain = png(engine, scheduler=scheduler)
    vendor = png(engine, scheduler=scheduler, algorithm_type="dpmsolver+++")
    assert vendor != plain
    assert vendor == png(engine, scheduler=scheduler, algorithm_type="sde-dpmsolver++")
    assert plain == png(engine, scheduler=scheduler, algorithm_type="dpmsolver++")  # diffusers' default


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_SCHEDULERS))
def test_refused_schedulers_really_cannot_run_img2img(engine, name):
    """The facts behind the refusal, checked on this diffusers: if one starts working, revisit it."""
    import diffusers

    pipe = engine.pipelines.get("tiny-sd").pipe
    original = pipe.scheduler
    try:
        pipe.scheduler = getattr(diffusers, name).from_config(original.config)
        with pytest.raises((AttributeError, NotImplementedError, IndexError)):  # no add_noise / VE-only
            pipe(prompt="x", image=INIT, strength=0.7, num_inference_steps=2, output_type="pil")
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_SCHEDULERS))
def test_refused_schedulers_are_a_400_naming_the_supported_ones(registry, name):
    with pytest.raises(InvalidInput) as e:
        resolve_controls(draft(scheduler=name), registry.get("tiny-sd"))
    assert e.value.field == "scheduler"
    assert e.value.message.startswith(f"scheduler {name} cannot run image-to-image")
    assert all(s in e.value.message for s in SCHEDULERS)


def test_submit_records_the_scheduler_used_and_resolves_the_flags(engine, registry):
    entry = registry.get("tiny-sd")
    assert model_scheduler_name(entry) == "PNDMScheduler"
    plain = resolve_controls(draft(), entry)
    assert plain.scheduler == "PNDMScheduler"
    assert resolve_controls(draft(use_karras_sigmas=True), entry).use_karras_sigmas is False  # PNDM takes none
    euler = resolve_controls(draft(scheduler="EulerDiscreteScheduler", use_karras_sigmas=True, tomesd=True), entry)
    assert (euler.scheduler, euler.use_karras_sigmas, euler.tomesd) == ("EulerDiscreteScheduler", True, True)
    with pytest.raises(InvalidInput, match="^algorithm_type applies only to DPMSolver") as e:
        resolve_controls(draft(scheduler="UniPCMultistepScheduler", algorithm_type="dpmsolver+++"), entry)
    assert e.value.field == "algorithm_type"
    # A request naming the model's own scheduler runs exactly what one naming none runs.
    assert png(engine, scheduler=plain.scheduler) == png(engine, scheduler=None)


@pytest.mark.parametrize("spec", [spec for spec in FAMILIES if not spec.controls.schedulers], ids=lambda s: s.name)
def test_families_without_these_controls_refuse_or_resolve_them(tmp_path, spec):
    assert spec.controls.clip_skip_offset is None and not spec.controls.tomesd  # the families' specs say so
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler"}))
    flux = ModelEntry(kind="folder", location=str(tmp_path), family=spec.name)
    resolved = resolve_controls(draft(model_id="f", tomesd=True, use_karras_sigmas=True), flux)
    assert (resolved.scheduler, resolved.tomesd, resolved.use_karras_sigmas) == (
        "FlowMatchEulerDiscreteScheduler", False, False)
    for field, value in (("scheduler", "DDIMScheduler"), ("clip_skip", 2)):
        with pytest.raises(InvalidInput, match=f"^{field} is not supported by model f") as e:
            resolve_controls(draft(model_id="f", **{field: value}), flux)
        assert e.value.field == field
    assert resolve_controls(draft(model_id="f", clip_skip=1), flux).clip_skip == 1  # 1 = no skip: fine anywhere


# --------------------------------------------------------------------------------------------
# clip_skip
# --------------------------------------------------------------------------------------------


def test_clip_skip_selects_the_text_encoder_layer(engine, base):
    outputs = [png(engine, clip_skip=n) for n in (2, 3, 4)]  # the tiny encoder has 3 layers
    assert len({base, *outputs}) == 4
    assert png(engine, clip_skip=1) == base  # 1 = no layer skipped (vendor meta default)
    assert not hasattr(engine.pipelines.get("tiny-sd").pipe.text_encoder, "text_model")  # shim removed
    assert png(engine) == base


def test_clip_skip_deeper_than_the_text_encoder_is_refused(engine, registry):
    with pytest.raises(InvalidInput, match="^clip_skip must be between 1 and 4 for model tiny-sd"):
        resolve_controls(draft(clip_skip=5), registry.get("tiny-sd"))  # at submit
    with pytest.raises(InvalidInput, match="^clip_skip must be between 1 and 4 for model tiny-sd"):
        png(engine, clip_skip=5)  # and in the engine, for models whose config was not readable at submit


# --------------------------------------------------------------------------------------------
# tomesd
# --------------------------------------------------------------------------------------------


def test_tomesd_merges_tokens_for_the_call_only(engine, base):
    unet = engine.pipelines.get("tiny-sd").pipe.unet
    block = transformer_blocks(unet)[0]  # in the highest-resolution level: the one tomesd merges
    tokens: list[int] = []
    hook = block.attn1.register_forward_pre_hook(lambda _m, args: tokens.append(args[0].shape[1]))
    try:
        with FlopCounterMode(display=False) as plain_flops:
            plain = png(engine)
        plain_tokens, tokens[:] = set(tokens), []
        with FlopCounterMode(display=False) as tome_flops:
            merged = png(engine, tomesd=True)
        merged_tokens = set(tokens)
    finally:
        hook.remove()
    assert plain == base and merged != base
    assert plain_tokens == {(SIZE // 8) ** 2} and merged_tokens == {(SIZE // 8) ** 2 // 2}  # ratio 0.5
    assert tome_flops.get_total_flops() < plain_flops.get_total_flops()
    assert png(engine, tomesd=True) == merged  # seeded: reproducible
    assert all(type(b).__name__ == "BasicTransformerBlock" for b in transformer_blocks(unet))  # patch removed
    assert png(engine) == base


# --------------------------------------------------------------------------------------------
# enhance_prompt, enhance_style
# --------------------------------------------------------------------------------------------


def test_every_style_of_the_vendor_page_has_its_own_preset():
    names = [s.strip() for s in VENDOR_STYLES.replace("\n", " ").split(",")]
    assert len(names) == 193 and len(set(names)) == 188  # the page repeats five names
    assert set(names) == set(prompts.styles())
    seen = set()
    for name in names:
        prompt, negative = prompts.enhance("a red bicycle", None, enhance_prompt=False, style=prompts.style_name(name))
        assert "a red bicycle" in prompt and prompt != "a red bicycle" and negative
        seen.add((prompt, negative))
    assert len(seen) == 188
    assert all(template.count("{prompt}") == 1 for template, _ in prompts.styles().values())


def test_enhance_prompt_and_style_compose():
    p, n = prompts.enhance("a red bicycle", "rain", enhance_prompt=True, style="anime")
    assert p.startswith("anime artwork, a red bicycle") and p.endswith(prompts.QUALITY_TERMS)
    assert n.startswith("rain, ") and n.endswith(prompts.QUALITY_NEGATIVE)
    assert prompts.enhance("a red bicycle", None, enhance_prompt=False, style=None) == ("a red bicycle", None)
    assert prompts.style_name("  Pixel-Art ") == "pixel-art"
    with pytest.raises(InvalidInput, match="^enhance_style 'oil-smudge' is not a known style") as e:
        prompts.style_name("oil-smudge")
    assert e.value.field == "enhance_style"


def test_enhanced_prompts_change_the_image(engine, registry, base):
    entry = registry.get("tiny-sd")
    enhanced = resolve_controls(draft(enhance_prompt=True), entry)
    styled = resolve_controls(draft(enhance_style="watercolor"), entry)
    assert enhanced.prompt.endswith(prompts.QUALITY_TERMS) and styled.prompt.startswith("watercolor painting")
    outputs = {base, png(engine, prompt=enhanced.prompt, negative_prompt=enhanced.negative_prompt),
               png(engine, prompt=styled.prompt, negative_prompt=styled.negative_prompt)}
    assert len(outputs) == 3
    assert resolve_controls(draft(enhance_prompt=False), entry).prompt == "a red bicycle"


# --------------------------------------------------------------------------------------------
# safety_checker, safety_checker_type
# --------------------------------------------------------------------------------------------


def test_the_builtin_tiny_checker_flags_nothing_and_changes_nothing(engine, base):
    out, nsfw = images(engine, samples=2)
    unchecked, _ = images(engine, samples=2, safety_checker=False)
    assert nsfw == [False, False] and out == unchecked
    assert out[0] == base


def high_frequency_energy(a: np.ndarray) -> float:
    return float(np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean())


def test_each_treatment_is_applied_to_flagged_images(flagging_engine, base):
    clean = pixels(base)
    treated = {}
    for kind in ("black", "blur", "pixelate", "sensitive_content_text"):
        out, nsfw = images(flagging_engine, samples=2, safety_checker_type=kind)
        assert nsfw == [True, True], kind
        treated[kind] = pixels(out[0])
        assert treated[kind].shape == clean.shape
    assert not treated["black"].any()
    blocks = treated["pixelate"].reshape(SIZE // 4, 4, SIZE // 4, 4, 3)
    assert (blocks == blocks[:, :1, :, :1, :]).all() and not np.array_equal(treated["pixelate"], clean)
    assert high_frequency_energy(treated["blur"]) < 0.5 * high_frequency_energy(clean)
    notice = treated["sensitive_content_text"]
    assert not np.array_equal(notice, treated["black"])
    assert (notice == notice[0, 0]).all(axis=2).mean() > 0.5  # a plain panel...
    assert (notice.min(axis=2) > 120).sum() >= 10  # ... with light text on it
    unchecked, nsfw = images(flagging_engine, safety_checker=False)
    assert nsfw == [False] and unchecked[0] == base  # safety_checker=no: untouched even when it would flag


def test_the_checker_is_loaded_once_per_worker(flagging_engine, registry):
    checkers = flagging_engine.shared[SHARED_KEY]
    images(flagging_engine)
    images(flagging_engine, safety_checker_type="black")
    assert checkers.loads == 1
    assert checkers.source_for(registry.get("tiny-sd")) == "tiny-flag-all"


def test_auto_uses_the_real_checker_for_real_models(engine, registry):
    checkers = engine.shared[SHARED_KEY]
    assert checkers.source_for(registry.get("tiny-sd")) == "tiny"
    real = ModelEntry(kind="hub", location="someone/some-model")
    assert checkers.source_for(real) == "CompVis/stable-diffusion-safety-checker"


def test_a_checker_that_cannot_be_loaded_fails_the_job_with_a_reason(engine, models_root, tmp_path):
    own = engine.shared[SHARED_KEY]
    engine.shared[SHARED_KEY] = SafetyCheckers(str(tmp_path / "no-such-checker"), models_dir=models_root)
    try:
        with pytest.raises(GenerationFailed, match="could not be loaded.*DIFFSERVE_SAFETY_CHECKER"):
            images(engine)
        assert images(engine, safety_checker=False)[1] == [False]
    finally:
        engine.shared[SHARED_KEY] = own


def test_obscure_rejects_unknown_treatments():
    with pytest.raises(ValueError):
        obscure(INIT, "smudge")
