"""The A1111 endpoints beyond generation, over loopback HTTP: /options kept per key and acted on, the lists,
/extra-single-image and /extra-batch-images (Pillow's resizes), /png-info reading what txt2img wrote,
/interrogate's 501 and the 401's WWW-Authenticate."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import web
from .hostile_corpus import png_bomb
from .servers import png_bytes


@pytest.fixture(scope="module")
def call(server):
    keys = {}

    def call(method: str, path: str, who: str = "a", **kw) -> httpx.Response:
        if who not in keys:
            keys[who] = server.create_key("--name", f"a1111-more-{who}")
        return web.request(method, f"{server.url}/sdapi/v1{path}", auth=("me", keys[who]), timeout=120, **kw)

    return call


def b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_of(answer: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(answer)))


def test_options_keep_every_key_per_api_key(call):
    before = call("GET", "/options", "a").json()
    assert before["send_seed"] is True and before["CLIP_stop_at_last_layers"] == 1
    written = {"send_seed": False, "a_client_setting": {"nested": [1, 2]}, "jpeg_quality": 80, "sd_vae": "None"}
    assert call("POST", "/options", "a", json=written).status_code == 200
    assert call("POST", "/options", "a", json={"jpeg_quality": 90}).status_code == 200  # per key: merged
    after = call("GET", "/options", "a").json()
    assert after["send_seed"] is False and after["a_client_setting"] == {"nested": [1, 2]}
    assert after["jpeg_quality"] == 90
    other = call("GET", "/options", "b").json()  # another key's options are its own
    assert other["send_seed"] is True and "a_client_setting" not in other


@pytest.mark.parametrize("body, field", [({"CLIP_stop_at_last_layers": "two"}, "CLIP_stop_at_last_layers"),
                                         ({"CLIP_stop_at_last_layers": 13}, "CLIP_stop_at_last_layers"),
                                         ({"send_seed": "no"}, "send_seed"),
                                         ({"sd_vae": "no-such-vae"}, "sd_vae"),
                                         ({"sd_model_checkpoint": "no-such-model"}, "no-such-model")])
def test_options_refuse_wrong_values_naming_them(call, body, field):
    answer = call("POST", "/options", "c", json=body)
    assert answer.status_code == 400 and field in answer.json()["detail"]
    assert call("GET", "/options", "c").json().get(next(iter(body))) != next(iter(body.values()))


def test_clip_stop_at_last_layers_is_the_requests_clip_skip(call):
    request = {"prompt": "a lighthouse", "seed": 7, "steps": 3, "width": 64, "height": 64}
    plain = call("POST", "/txt2img", "d", json=request).json()
    assert call("POST", "/options", "d", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    skipped = call("POST", "/txt2img", "d", json=request).json()
    assert "Clip skip: 2" in skipped["info"] and "Clip skip" not in plain["info"]
    assert image_of(skipped["images"][0]).tobytes() != image_of(plain["images"][0]).tobytes()


def test_png_info_reads_back_what_txt2img_wrote(call):
    made = call("POST", "/txt2img", json={"prompt": "a red barn", "negative_prompt": "fog", "seed": 11, "steps": 3,
                                          "width": 64, "height": 64, "sampler_name": "Euler a"}).json()
    read = call("POST", "/png-info", json={"image": b64(base64.b64decode(made["images"][0]))}).json()
    params = read["parameters"]
    assert read["info"].startswith("a red barn\nNegative prompt: fog\n")
    assert params["Prompt"] == "a red barn" and params["Negative prompt"] == "fog"
    assert params["Steps"] == "3" and params["Seed"] == "11" and params["Sampler"] == "Euler a"
    assert params["Size-1"] == "64" and params["Size-2"] == "64" and params["Model"] == "tiny-sd"


def test_png_info_of_other_chunks_and_of_a_plain_png(call):
    text = PngInfo()
    text.add_text("parameters", 'a cat\nSteps: 5, Sampler: DDIM, CFG scale: 7, Lora hashes: "a: 1, b: 2"')
    text.add_itxt("Software", "some editor")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=text)
    read = call("POST", "/png-info", json={"image": b64(buf.getvalue())}).json()
    assert read["parameters"]["Lora hashes"] == "a: 1, b: 2" and read["parameters"]["Steps"] == "5"
    assert read["items"] == {"Software": "some editor"}
    plain = call("POST", "/png-info", json={"image": b64(png_bytes())}).json()
    assert plain == {"info": "", "items": {}, "parameters": {}}


def test_png_info_refuses_a_bomb_before_decoding_it(call):
    answer = call("POST", "/png-info", json={"image": b64(png_bomb(50_000, 50_000))})
    assert answer.status_code == 400 and "image" in answer.json()["detail"]


def test_extra_single_image_is_pillows_lanczos(call):
    source = png_bytes(64, 48)
    body = {"image": b64(source), "upscaler_1": "Lanczos", "upscaling_resize": 2}
    answer = call("POST", "/extra-single-image", json=body)
    assert answer.status_code == 200
    got = image_of(answer.json()["image"])
    expected = Image.open(io.BytesIO(source)).convert("RGB").resize((128, 96), Image.Resampling.LANCZOS)
    assert got.size == (128, 96) and got.convert("RGB").tobytes() == expected.tobytes()
    to_box = call("POST", "/extra-single-image", json={**body, "resize_mode": 1, "upscaling_resize_w": 100,
                                                          "upscaling_resize_h": 60}).json()
    assert image_of(to_box["image"]).size == (100, 60)  # scaled to cover (96x72 after A1111 rounds), on 100x60
    unchanged = call("POST", "/extra-single-image", json={"image": b64(source)}).json()  # upscaler None
    assert image_of(unchanged["image"]).size == (64, 48)


def test_extra_batch_images_and_what_is_refused(call):
    batch = {"imageList": [{"data": b64(png_bytes(32, 32)), "name": "a.png"},
                           {"data": b64(png_bytes(16, 24)), "name": "b.png"}],
             "upscaler_1": "Nearest", "upscaling_resize": 2}
    answer = call("POST", "/extra-batch-images", json=batch).json()
    assert [image_of(i).size for i in answer["images"]] == [(64, 64), (32, 48)]
    for body, field, status in [({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1", 422),
                                ({"upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}, "gfpgan_visibility", 422),
                                ({"upscaler_1": "Lanczos", "upscaling_resize": 8, "image": b64(png_bytes(1024, 1024))},
                                 "upscaling_resize", 400)]:
        refused = call("POST", "/extra-single-image", json={"image": b64(png_bytes()), **body})
        assert refused.status_code == status and field in refused.json()["detail"], refused.text


def test_lists_in_a1111s_shapes(call):
    upscalers = call("GET", "/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    assert set(call("GET", "/embeddings").json()) == {"loaded", "skipped"}
    styles = call("GET", "/prompt-styles").json()
    assert styles and {"name", "prompt", "negative_prompt"} == set(styles[0])
    assert any(s["name"] == "watercolor" and "{prompt}" in s["prompt"] for s in styles)
    for path in ("/hypernetworks", "/face-restorers", "/realesrgan-models", "/loras", "/sd-vae"):
        assert isinstance(call("GET", path).json(), list)
    total = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal")).split()[1]) * 1024
    memory = call("GET", "/memory").json()
    assert memory["ram"]["total"] == total and 0 < memory["ram"]["free"] <= total and "error" in memory["cuda"]
    assert call("GET", "/cmd-flags").json()["api"] is True
    assert call("POST", "/refresh-checkpoints").status_code == 200
    assert call("POST", "/unload-checkpoint").status_code == 403  # an admin's order to the workers


def test_interrogate_is_a_clear_501(call):
    answer = call("POST", "/interrogate", json={"image": b64(png_bytes()), "model": "clip"})
    assert answer.status_code == 501 and "caption model" in answer.json()["detail"]


def test_401_names_basic_auth(server):
    for path in ("/options", "/upscalers", "/txt2img"):
        answer = web.request("POST" if path == "/txt2img" else "GET", f"{server.url}/sdapi/v1{path}", json={})
        assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Basic")
