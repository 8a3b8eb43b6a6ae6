"""What two A1111 generation settings change: `eta_noise_seed_delta` (ENSD, an option or override_settings)
re-seeds the noise ancestral/SDE samplers draw between steps, as A1111 does, and the infotext (the PNG's
`parameters` chunk) says `ENSD: n` for those samplers; `restore_faces` is accepted and changes nothing, as
A1111's restore_faces does when no face restorer is present (modules/face_restoration.py returns the image)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from .a1111_client import call  # noqa: F401 (the shared A1111 client fixture)
from .servers import png_bytes


def generate(call, path: str = "/txt2img", **fields) -> tuple[np.ndarray, str, str]:
    """(pixels, the info's infotext, the PNG's parameters chunk) of a one-image answer."""
    r = call("POST", path, json={"prompt": "a fox", "width": 64, "height": 64, "steps": 6, "seed": 5, **fields})
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    image.load()
    return np.asarray(image.convert("RGB")), json.loads(r.json()["info"])["infotexts"][0], image.text["parameters"]


def test_ensd_changes_an_ancestral_samplers_noise_and_is_in_the_infotext(call):
    plain, text, _ = generate(call, sampler_name="Euler a")
    assert "ENSD" not in text
    shifted, text, chunk = generate(call, sampler_name="Euler a", override_settings={"eta_noise_seed_delta": 31337})
    assert not np.array_equal(plain, shifted)
    assert ", ENSD: 31337" in text and chunk == text and "Seed: 5," in text
    assert call("POST", "/options", json={"eta_noise_seed_delta": 31337}).status_code == 200
    try:
        from_options, text, _ = generate(call, sampler_name="Euler a")
        assert np.array_equal(from_options, shifted) and ", ENSD: 31337" in text  # the option acts the same
        other, _, _ = generate(call, sampler_name="Euler a", override_settings={"eta_noise_seed_delta": 1})
        assert not np.array_equal(other, shifted)
        # a sampler without eta noise: the same image, and no ENSD in its infotext (as A1111 writes it)
        euler, text, _ = generate(call, sampler_name="Euler")
        assert "ENSD" not in text
        assert np.array_equal(euler, generate(call, sampler_name="Euler",
                                              override_settings={"eta_noise_seed_delta": 0})[0])
    finally:
        call("POST", "/options", json={"eta_noise_seed_delta": 0})


def test_ensd_on_the_batched_path_too(call):
    init = base64.b64encode(png_bytes(64, 64)).decode()
    fields = {"init_images": [init], "denoising_strength": 0.9, "sampler_name": "DPM2 a"}
    plain, _, _ = generate(call, "/img2img", **fields)
    shifted, text, _ = generate(call, "/img2img", **fields, override_settings={"eta_noise_seed_delta": 7})
    assert not np.array_equal(plain, shifted) and ", ENSD: 7" in text


def test_ensd_out_of_range_is_a_400(call):
    r = call("POST", "/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                       "override_settings": {"eta_noise_seed_delta": -1}})
    assert r.status_code == 400 and "eta_noise_seed_delta" in r.json()["detail"]


def test_restore_faces_is_accepted_and_changes_nothing(call):
    plain, plain_text, _ = generate(call, sampler_name="DDIM")
    restored, text, chunk = generate(call, sampler_name="DDIM", restore_faces=True)
    assert np.array_equal(plain, restored) and text == plain_text == chunk
    assert "Face restoration" not in text  # nothing restored them
