"""service/validation.py: one entry, its stated order, and messages that quote the bad value. No server: the
registry of the built-in tiny models, images decoded in-process."""

from __future__ import annotations

import anyio
import pytest
from PIL import Image

from diffserve.config import Settings
from diffserve.core.errors import InvalidInput, ModelNotFound
from diffserve.core.offload import Offload
from diffserve.core.request import GenerationRequest, RequestDraft
from diffserve.engine.identity.faces import SubmitFaceCheck
from diffserve.engine.models.registry import ModelRegistry
from diffserve.service.validation import InputImage, Inputs, check_draft, validate


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return ModelRegistry.load(root / "no-models.json", root)


class Recorder:
    """The outside validation reaches: which images it loaded and kept, in order."""

    def __init__(self, size=(64, 64)) -> None:
        self.loaded: list[str] = []
        self.kept: list[InputImage] = []
        self.size = size

    async def load(self, value: str, field: str) -> Image.Image:
        self.loaded.append(field)
        return Image.new("RGB", self.size, "red")

    async def keep(self, image: InputImage) -> None:
        self.kept.append(image)

    def inputs(self) -> Inputs:
        return Inputs(self.load, self.keep, Offload(2), SubmitFaceCheck(), "tok")


def run(draft: RequestDraft, registry, settings=None, recorder=None) -> GenerationRequest:
    settings = settings or Settings()
    recorder = recorder or Recorder()
    return anyio.run(validate, draft, registry, settings, recorder.inputs())


def draft(**fields) -> RequestDraft:
    fields.setdefault("model_id", "tiny-sd")
    fields.setdefault("prompt", "a red bicycle")
    fields.setdefault("init_image", "https://images.example/cat.png")
    return RequestDraft(**fields)


def refusal(fn, *args) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        fn(*args)
    return caught.value


def test_messages_quote_the_bad_value_in_the_vendor_wording(registry):
    e = refusal(run, draft(height=501), registry)
    assert (e.message, e.field) == ("height must be divisible by 8 but is 501", "height")
    assert refusal(run, draft(width=1001), registry).message == "width must be between 32 and 512 but is 1001"
    assert refusal(run, draft(strength=3), registry).message == "strength must be between 0 and 1 but is 3"
    assert refusal(run, draft(guidance_scale=1.5e308), registry).message.endswith("but is 1.5e+308")
    assert refusal(run, draft(steps=0), registry).message == "num_inference_steps must be between 1 and 50 but is 0"


def test_the_stated_order(registry):
    settings = Settings()
    long_prompt = "x" * (settings.limits.max_prompt_chars + 1)
    # 1 text before 3 model: the unknown model's id is not what is reported
    assert refusal(run, draft(prompt=long_prompt, model_id="nope", steps=0), registry).field == "prompt"
    # 2 reference count before 3 model
    refs = ["https://images.example/r.png"] * (settings.limits.max_reference_images + 1)
    assert "too many reference images" in refusal(run, draft(model_id="nope", extra_images=refs), registry).message
    # 3 model before 4 ranges
    with pytest.raises(ModelNotFound):
        run(draft(model_id="nope", steps=0), registry)
    # 4 ranges before 5 model rules (assets)
    assert refusal(run, draft(steps=0, lora_models=["no-such-lora"]), registry).field == "num_inference_steps"
    # 5 assets before 6 controls (a scheduler the family cannot run image-to-image)
    assert refusal(run, draft(lora_models=["no-such-lora"], scheduler="KarrasVeScheduler"),
                   registry).field == "lora_model"
    # 6 controls before 7 webhook
    assert refusal(run, draft(scheduler="KarrasVeScheduler", webhook="http://127.0.0.1/hook"),
                   registry).field == "scheduler"


def test_webhook_refused_before_any_image_is_fetched(registry):
    recorder = Recorder()
    e = refusal(run, draft(webhook="http://127.0.0.1:9/hook"), registry, Settings(), recorder)
    assert e.field == "webhook" and "private" in e.message
    assert recorder.loaded == [] and recorder.kept == []


def test_batch_pixels_checked_before_the_init_image_is_kept(registry):
    recorder = Recorder(size=(512, 512))
    settings = Settings(limits={"max_batch_pixels": 3 * 512 * 512})
    e = refusal(run, draft(samples=4, width=512, height=512), registry, settings, recorder)
    assert e.message == "samples x width x height is too large: 4 x 512 x 512 = 1048576 pixels (max 786432)"
    assert recorder.loaded == ["init_image"] and recorder.kept == []  # fetched to learn the size, never stored


def test_a_valid_draft_gives_the_request_and_keeps_each_image_once(registry):
    recorder = Recorder(size=(100, 70))
    request = run(draft(mode="inpaint", mask_image="m", seed=7), registry, Settings(), recorder)
    assert isinstance(request, GenerationRequest)
    assert (request.width, request.height, request.seed) == (96, 64, 7)  # the init image's size, on 8
    assert recorder.loaded == ["init_image", "mask_image"]
    assert [k.key for k in recorder.kept] == [request.init_image_key, request.mask_image_key]
    assert [k.size for k in recorder.kept] == [(96, 64), (96, 64)] and recorder.kept[1].image.mode == "L"
    assert request.steps == registry.get("tiny-sd").limits.default_steps  # defaults filled in


def test_check_draft_is_the_part_without_io(registry):
    settings = Settings()
    assert check_draft(draft(), registry, settings).max_size == registry.get("tiny-sd").limits.max_size
    assert check_draft(draft(max_side=256), registry, settings).max_size == 256  # the dialect's cap
    assert refusal(check_draft, draft(width=512, max_side=256), registry, settings).message.startswith(
        "width must be between")


def test_validate_blocking_runs_the_same_steps_in_the_same_order(registry):
    """validate_blocking (every image inline: one thread call) loads, keeps and resolves what validate does."""
    from diffserve.service.validation import BlockingInputs, inline_images, validate_blocking

    d = draft(mode="inpaint", mask_image="https://images.example/m.png", seed=7)
    awaited = Recorder()
    expected = run(d, registry, recorder=awaited)
    blocking = Recorder()

    def load(value: str, field: str) -> Image.Image:
        blocking.loaded.append(field)
        return Image.new("RGB", blocking.size, "red")

    settings = Settings()
    got = validate_blocking(d, registry.get(d.model_id), check_draft(d, registry, settings), settings,
                            BlockingInputs(load, blocking.kept.append, SubmitFaceCheck(), "tok"))
    assert got == expected
    assert blocking.loaded == awaited.loaded and [k.key for k in blocking.kept] == [k.key for k in awaited.kept]
    assert not inline_images(d, lambda value: not value.startswith("https://"))
    assert inline_images(draft(init_image="data:image/png;base64,AAAA"), lambda value: value.startswith("data:"))
    small = Settings(limits={"max_batch_pixels": 64})  # step 9 refuses, after the init image's load, before its keep
    refused = Recorder()
    e = refusal(validate_blocking, d, registry.get(d.model_id), check_draft(d, registry, small), small,
                BlockingInputs(load, refused.kept.append, SubmitFaceCheck(), "tok"))
    assert "max_batch_pixels" in e.message or "pixels" in e.message
    assert refused.kept == []
