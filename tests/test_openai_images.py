"""OpenAI's images API with OpenAI's own Python client (base_url pointed at diffserve), and the two engine
tasks it needs -- text to image and inpainting -- also through ModelsLab's text2img and inpaint pages."""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from . import web
from .jobs_helpers import data_uri
from .servers import png_bytes


@pytest.fixture(scope="module")
def key(jobs_server):
    return jobs_server.create_key("--name", "openai")


@pytest.fixture(scope="module")
def client(jobs_server, key):
    return openai.OpenAI(base_url=f"{jobs_server.url}/v1", api_key=key, max_retries=0)  # the one change


def png_file(width=64, height=64, color=(200, 80, 40)) -> io.BytesIO:
    f = io.BytesIO(png_bytes(width, height, color))
    f.name = "image.png"
    return f


def mask_file(width=64, height=64) -> io.BytesIO:
    """OpenAI's convention: alpha 0 marks the area to edit (here the centre square)."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    f = io.BytesIO()
    mask.save(f, format="PNG")
    f.seek(0)
    f.name = "mask.png"
    return f


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_edit_one_image_b64_and_url(client):
    out = client.images.edit(image=png_file(), prompt="a watercolor", model="tiny-sd", response_format="b64_json",
                             quality="low")
    assert len(out.data) == 1 and decode(out.data[0].b64_json).size == (64, 64)
    assert out.data[0].revised_prompt == "a watercolor" and out.quality == "low"
    assert out.size is None  # 64x64 is not among the spec's sizes: left out (the real size: x-diffserve-size)
    url = client.images.edit(image=png_file(), prompt="x", n=2, size="96x64", quality="low")
    assert len(url.data) == 2 and url.output_format == "png"
    image = Image.open(io.BytesIO(web.get(url.data[1].url).content))
    assert image.format == "PNG" and image.size == (96, 64)


def test_edit_with_a_mask_repaints_only_the_transparent_area(client):
    original = png_file(64, 64, (200, 30, 30))
    out = client.images.edit(image=original, mask=mask_file(), prompt="a blue square", model="tiny-sd",
                             response_format="b64_json", quality="low")
    pixels = np.asarray(decode(out.data[0].b64_json).convert("RGB")).astype(int)
    source = np.asarray(Image.open(io.BytesIO(png_bytes(64, 64, (200, 30, 30))))).astype(int)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False
    assert (pixels[outside] == source[outside]).all()  # kept exactly
    assert np.abs(pixels[~outside] - source[~outside]).mean() > 10  # repainted


def test_several_images_go_where_the_model_takes_references(client):
    out = client.images.edit(image=[png_file(), png_file(48, 48, (10, 200, 10))], prompt="both together",
                             model="tiny-flux-kontext", response_format="b64_json", quality="low")
    assert len(out.data) == 1
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(image=[png_file(), png_file()], prompt="x", model="tiny-sd")
    assert refused.value.body["param"] == "image" and "takes no reference images" in refused.value.body["message"]


def test_output_formats(client):
    jpeg = client.images.edit(image=png_file(), prompt="x", output_format="jpeg", output_compression=50,
                              response_format="b64_json", quality="low")
    assert decode(jpeg.data[0].b64_json).format == "JPEG" and jpeg.output_format == "jpeg"
    webp = client.images.edit(image=png_file(), prompt="x", output_format="webp", quality="low")
    assert Image.open(io.BytesIO(web.get(webp.data[0].url).content)).format == "WEBP"


def test_generations_text_to_image(client):
    out = client.images.generate(prompt="a lighthouse", model="tiny-sd", size="64x96", quality="low", n=2)
    assert len(out.data) == 2 and decode(out.data[0].b64_json).size == (64, 96)
    flux = client.images.generate(prompt="a lighthouse", model="tiny-flux", size="64x64", quality="low")
    assert decode(flux.data[0].b64_json).size == (64, 64)


def test_streaming_sends_partial_images_then_the_result(client):
    stream = client.images.edit(image=png_file(256, 256), prompt="slowly", model="tiny-sd", stream=True,
                                partial_images=2, quality="high")
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-1] == "image_edit.completed" and "image_edit.partial_image" in kinds
    partial = next(e for e in events if e.type == "image_edit.partial_image")
    assert partial.partial_image_index == 0 and decode(partial.b64_json).format == "PNG"
    assert decode(events[-1].b64_json).size == (256, 256)


def test_errors_in_openais_shape(client, jobs_server):
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.edit(image=png_file(), prompt="x", model="gpt-image-1")
    assert missing.value.body["code"] == "model_not_found" and missing.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.BadRequestError) as transparent:
        client.images.edit(image=png_file(), prompt="x", background="transparent")
    assert transparent.value.body["param"] == "background"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.edit(image=png_file(), prompt="x", n=9)
    assert too_many.value.body["param"] == "n" and "between 1 and 4" in too_many.value.body["message"]
    with pytest.raises(openai.BadRequestError) as size:
        client.images.generate(prompt="x", size="1000x1000")
    assert size.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as opaque_mask:
        client.images.edit(image=png_file(), mask=png_file(), prompt="x")
    assert opaque_mask.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as cannot:
        client.images.generate(prompt="x", model="tiny-flux-kontext")
    assert cannot.value.body["param"] == "model_id" and "cannot generate from text alone" in cannot.value.body["message"]
    bad_key = openai.OpenAI(base_url=f"{jobs_server.url}/v1", api_key="ds_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.images.generate(prompt="x")


def test_modelslab_text2img_and_inpaint_pages(jobs_server, key):
    t2i = jobs_server.post("/api/v6/images/text2img", {"key": key, "prompt": "a cat", "width": 64, "height": 96,
                                                       "num_inference_steps": 4}).json()
    assert t2i["status"] == "success" and (t2i["meta"]["W"], t2i["meta"]["H"]) == (64, 96)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    inpaint = jobs_server.post("/api/v1/enterprise/images/inpaint", {
        "key": key, "prompt": "a cat", "init_image": data_uri(), "num_inference_steps": 4,
        "mask_image": base64.b64encode(buf.getvalue()).decode()}).json()
    assert inpaint["status"] == "success", inpaint
    kept = np.asarray(Image.open(io.BytesIO(web.get(inpaint["output"][0]).content)).convert("RGB"))[:, 40:]
    assert (kept == np.asarray(Image.open(io.BytesIO(png_bytes(64, 64))))[:, 40:]).all()
    no_mask = jobs_server.post("/api/v6/images/inpaint", {"key": key, "prompt": "x", "init_image": data_uri()})
    assert no_mask.status_code == 400 and no_mask.json()["message"] == "mask_image is required for inpainting"
    refused = jobs_server.post("/api/v6/images/inpaint", {"key": key, "prompt": "x", "init_image": data_uri(),
                                                          "mask_image": data_uri(), "model_id": "tiny-hidream"})
    assert refused.status_code == 400 and "cannot inpaint" in refused.json()["message"]


@pytest.mark.parametrize("model", ["tiny-sdxl", "tiny-flux"])
def test_text_to_image_and_inpainting_on_sdxl_and_flux(client, model):
    generated = client.images.generate(prompt="a lighthouse", model=model, size="64x64", quality="low")
    assert decode(generated.data[0].b64_json).size == (64, 64)
    edited = client.images.edit(image=png_file(64, 64, (200, 30, 30)), mask=mask_file(), prompt="blue",
                                model=model, response_format="b64_json", quality="low")
    pixels = np.asarray(decode(edited.data[0].b64_json).convert("RGB")).astype(int)
    assert (pixels[:16] == np.asarray(Image.open(io.BytesIO(png_bytes(64, 64, (200, 30, 30)))))[:16]).all()


def test_models_list_through_the_client(client):
    ids = {m.id for m in client.models.list()}
    assert {"tiny-sd", "tiny-sdxl", "tiny-flux"} <= ids
