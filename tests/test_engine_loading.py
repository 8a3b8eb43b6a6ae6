"""Model loading (hub cache, diffusers folder, single checkpoint) proven on the tiny random SD 1.x model.

No network: the hub source is served from a hand-built Hugging Face cache and the single-file
checkpoint is written from the tiny model's own weights (renamed to the original LDM keys).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffserve.core.errors import InvalidInput
from diffserve.engine.tiny import sd as tiny
from diffserve.engine.models.loading import ModelSource, load_img2img_pipeline
from diffserve.engine.tiny.sd import build_tiny_sd

from .ldm_checkpoint import diffusers_to_ldm_checkpoint

HUB_REPO = "diffserve/tiny-sd"
HUB_COMMIT = hashlib.sha1(HUB_REPO.encode()).hexdigest()  # any 40-hex commit id will do
PROMPT = "women playing tennis"


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def init_image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


@pytest.fixture(scope="session")
def folder_pipe(tiny_sd: Path):
    return load_img2img_pipeline(ModelSource("folder", str(tiny_sd)))


@pytest.fixture(scope="session")
def hub_cache(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face hub cache holding HUB_REPO, laid out as huggingface_hub writes it:
    models--<org>--<name>/{blobs/<hash>, snapshots/<commit>/<path> -> ../../blobs/<hash>, refs/main}."""
    cache = tmp_path_factory.mktemp("hf-cache")
    repo_dir = cache / ("models--" + HUB_REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / HUB_COMMIT
    (repo_dir / "blobs").mkdir(parents=True)
    for source in sorted(p for p in tiny_sd.rglob("*") if p.is_file()):
        relative = source.relative_to(tiny_sd)
        data = source.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(HUB_COMMIT)
    return cache


@pytest.fixture(scope="session")
def single_file_model(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, config folder): the tiny model as one LDM-format .safetensors, plus its
    diffusers configs without weights (what `from_single_file(config=...)` reads)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("single-file")
    checkpoint = root / "tiny-sd.safetensors"
    save_file(diffusers_to_ldm_checkpoint(tiny_sd), str(checkpoint))
    config = root / "tiny-sd-config"
    shutil.copytree(tiny_sd, config, ignore=shutil.ignore_patterns("*.safetensors"))
    return checkpoint, config


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def generate(pipe, image: Image.Image, seed: int) -> np.ndarray:
    result = pipe(
        prompt=PROMPT,
        image=image,
        strength=0.7,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(seed),
    )
    (output,) = result.images
    assert output.size == (64, 64)
    return np.asarray(output)


@pytest.fixture(scope="session")
def folder_image(folder_pipe, init_image: Image.Image) -> np.ndarray:
    return generate(folder_pipe, init_image, seed=1)


# --------------------------------------------------------------------------------------------
# build_tiny_sd
# --------------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tiny_sd_folder_layout(tiny_sd: Path) -> None:
    model_index = json.loads((tiny_sd / "model_index.json").read_text())
    assert model_index["_class_name"] == "StableDiffusionPipeline"
    assert model_index["safety_checker"] == [None, None]
    assert model_index["feature_extractor"] == [None, None]
    assert model_index["requires_safety_checker"] is False
    scheduler = json.loads((tiny_sd / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler"
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == (
        "scaled_linear",
        0.00085,
        0.012,
    )
    assert scheduler["skip_prk_steps"] is True and scheduler["steps_offset"] == 1
    assert "random" in (tiny_sd / "README.md").read_text()
    assert len(json.loads((tiny_sd / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))) == 49408


def test_tiny_sd_build_is_deterministic(tiny_sd: Path, tmp_path: Path) -> None:
    again = build_tiny_sd(tmp_path / "again")
    first, second = _files(tiny_sd), _files(again)
    assert sorted(first) == sorted(second)
    weight_files = [name for name in first if name.endswith(".safetensors")]
    assert len(weight_files) == 3
    for name in first:  # weights and every config/tokenizer file
        assert first[name] == second[name], name


def test_tiny_sd_build_is_idempotent(tiny_sd: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_sd.rglob("*")}
    assert build_tiny_sd(tiny_sd) == tiny_sd
    assert {p: p.stat().st_mtime_ns for p in tiny_sd.rglob("*")} == before
    assert [p.name for p in tiny_sd.parent.iterdir() if p.name.startswith(".")] == []


def test_tiny_sd_build_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(folder: Path) -> None:
        (folder / "model_index.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny, "_write_pipeline", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        build_tiny_sd(tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_tiny_sd_build_keeps_a_concurrent_winner(tiny_sd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "tiny"

    def other_process_wins(folder: Path) -> None:
        shutil.copytree(tiny_sd, dest)  # another builder renames its folder in first
        (folder / "model_index.json").write_text("{}")

    monkeypatch.setattr(tiny, "_write_pipeline", other_process_wins)
    assert build_tiny_sd(dest) == dest
    assert _files(dest) == _files(tiny_sd)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_tiny_sd_build_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_tiny_sd(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "notes.txt").read_text() == "mine"


def test_tokenizer_uses_real_clip_ids(folder_pipe) -> None:
    # Reference ids of openai/clip-vit-large-patch14 ("a photo of a cat" is the well-known example).
    tokenizer = folder_pipe.tokenizer
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer(PROMPT).input_ids == [49406, 1507, 1629, 5298, 49407]
    assert tokenizer.convert_ids_to_tokens([1507, 1629, 5298]) == ["women</w>", "playing</w>", "tennis</w>"]
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token == "<|endoftext|>"


def test_vae_downsamples_8x(folder_pipe, init_image: Image.Image) -> None:
    pixels = folder_pipe.image_processor.preprocess(init_image)
    with torch.no_grad():
        latents = folder_pipe.vae.encode(pixels).latent_dist.mean
    assert tuple(latents.shape) == (1, 4, 8, 8)


# --------------------------------------------------------------------------------------------
# Loading and generating
# --------------------------------------------------------------------------------------------


def test_folder_load_generates_reproducibly(folder_pipe, init_image: Image.Image, folder_image: np.ndarray) -> None:
    assert type(folder_pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert getattr(folder_pipe, "safety_checker", None) is None
    assert folder_image.shape == (64, 64, 3)
    assert np.array_equal(generate(folder_pipe, init_image, seed=1), folder_image)
    assert not np.array_equal(generate(folder_pipe, init_image, seed=2), folder_image)


def test_hub_load_from_cache_offline(
    hub_cache: Path, hub_offline: None, init_image: Image.Image, folder_image: np.ndarray
) -> None:
    pipe = load_img2img_pipeline(ModelSource("hub", HUB_REPO), cache_dir=str(hub_cache))
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert np.array_equal(generate(pipe, init_image, seed=1), folder_image)


def test_hub_load_pinned_revision(hub_cache: Path) -> None:
    # Explicitly offline (no env var): a cached commit loads with no network call.
    pipe = load_img2img_pipeline(
        ModelSource("hub", HUB_REPO, revision=HUB_COMMIT), cache_dir=str(hub_cache), offline=True
    )
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"


def test_hub_repo_not_cached_is_invalid_input(hub_cache: Path, hub_offline: None) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_img2img_pipeline(ModelSource("hub", "diffserve/not-cached"), cache_dir=str(hub_cache))
    assert caught.value.field == "model_id"
    assert "diffserve/not-cached are not available offline" in caught.value.message


def test_single_file_load_matches_folder(
    single_file_model: tuple[Path, Path], folder_pipe, init_image: Image.Image, folder_image: np.ndarray
) -> None:
    checkpoint, config = single_file_model
    pipe = load_img2img_pipeline(ModelSource("single_file", str(checkpoint), config=str(config)), offline=True)
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    # The LDM renaming is exactly invertible (pure renames; VAE attention 1x1 convs <-> linears
    # are reshapes), so every weight comes back bit-identical and so does the image.
    for name in ("unet", "vae", "text_encoder"):
        expected, loaded = getattr(folder_pipe, name).state_dict(), getattr(pipe, name).state_dict()
        assert expected.keys() == loaded.keys(), name
        assert all(torch.equal(expected[key], loaded[key]) for key in expected), name
    assert dict(pipe.scheduler.config) == dict(folder_pipe.scheduler.config)
    assert np.array_equal(generate(pipe, init_image, seed=1), folder_image)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _invalid(source: ModelSource, **kwargs) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        load_img2img_pipeline(source, **kwargs)
    assert caught.value.field == "model_id"
    assert source.location in caught.value.message
    assert "Traceback" not in caught.value.message
    return caught.value


def test_missing_folder(tmp_path: Path) -> None:
    error = _invalid(ModelSource("folder", str(tmp_path / "absent")))
    assert "does not exist" in error.message


def test_folder_without_model_index(tmp_path: Path) -> None:
    error = _invalid(ModelSource("folder", str(tmp_path)))
    assert "model_index.json" in error.message


def test_folder_with_corrupt_weights(tiny_sd: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file" * 8)
    _invalid(ModelSource("folder", str(broken)))


def test_corrupt_single_file(single_file_model: tuple[Path, Path], tmp_path: Path) -> None:
    _, config = single_file_model
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 64)
    _invalid(ModelSource("single_file", str(corrupt), config=str(config)), offline=True)


def test_truncated_single_file(single_file_model: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, config = single_file_model
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    _invalid(ModelSource("single_file", str(truncated), config=str(config)), offline=True)


def test_single_file_without_model_weights(single_file_model: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    _, config = single_file_model
    lora_like = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(lora_like))
    error = _invalid(ModelSource("single_file", str(lora_like), config=str(config)), offline=True)
    assert "missing" in error.message


def test_missing_single_file(single_file_model: tuple[Path, Path], tmp_path: Path) -> None:
    _, config = single_file_model
    error = _invalid(ModelSource("single_file", str(tmp_path / "absent.safetensors"), config=str(config)))
    assert "does not exist" in error.message


def test_single_file_missing_config_folder(single_file_model: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, _ = single_file_model
    error = _invalid(ModelSource("single_file", str(checkpoint), config=str(tmp_path / "no-config")))
    assert "Config folder" in error.message


def test_single_file_offline_needs_config(single_file_model: tuple[Path, Path], hub_offline: None) -> None:
    checkpoint, _ = single_file_model
    error = _invalid(ModelSource("single_file", str(checkpoint)))
    assert "config folder" in error.message


def test_single_file_config_that_does_not_match(single_file_model: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, config = single_file_model
    other = tmp_path / "other-config"
    shutil.copytree(config, other)
    unet_config = json.loads((other / "unet" / "config.json").read_text())
    unet_config["cross_attention_dim"] = 64
    (other / "unet" / "config.json").write_text(json.dumps(unet_config))
    _invalid(ModelSource("single_file", str(checkpoint), config=str(other)), offline=True)


def test_single_file_checkpoint_missing_weights(single_file_model: tuple[Path, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    checkpoint, config = single_file_model
    partial = load_file(str(checkpoint))
    del partial["first_stage_model.decoder.conv_out.bias"]
    partial_path = tmp_path / "partial.safetensors"
    save_file(partial, str(partial_path))
    error = _invalid(ModelSource("single_file", str(partial_path), config=str(config)), offline=True)
    assert "missing" in error.message


def test_model_source_validates_its_fields() -> None:
    with pytest.raises(ValueError):
        ModelSource("ftp", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ModelSource("folder", "/models/x", revision="main")
    with pytest.raises(ValueError):
        ModelSource("hub", "org/x", config="/configs/x")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Env says nothing about offline mode, but any connection attempt is recorded and refused."""
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_hub_default_mode_uses_cache_without_network(hub_cache: Path, no_network: list[str]) -> None:
    pipe = load_img2img_pipeline(ModelSource("hub", HUB_REPO), cache_dir=str(hub_cache))
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert no_network == []


def test_hub_default_mode_goes_online_only_when_not_cached(
    hub_cache: Path, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub retries refused connections 5 times with 1-8 s backoffs (~25 s): skip the waits.
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    error = _invalid(ModelSource("hub", "diffserve/not-cached"), cache_dir=str(hub_cache))
    assert "could not be downloaded" in error.message
    assert no_network  # it did try the hub
