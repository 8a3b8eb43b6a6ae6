"""The ModelsLab route table on its own (no server): the paths it serves, each row's defaults, the words that
leave a choice to the server. The HTTP behaviour of each path is in test_modelslab_v6, test_modelslab_paths,
test_realtime and test_pony."""

from __future__ import annotations

import pytest

from diffserve.api.loose import unset_word
from diffserve.api.modelslab import paths
from diffserve.api.modelslab.router import build_router, generate, modelslab_routes
from diffserve.api.modelslab.protocol import DraftContext
from diffserve.config import Settings
from diffserve.core.request import ModelLimits

# Every ModelsLab path served before the table (api/modelslab, api/realtime, api/pony, api/enterprise_storage.py)
SERVED = {
    "/api/v6/images/img2img", "/api/v6/images/text2img", "/api/v6/images/inpaint",
    "/api/v6/images/fetch", "/api/v6/images/fetch/{request_id}", "/api/v6/processing/request_count",
    "/api/v7/images/image-to-image", "/api/v7/images/text-to-image", "/api/v7/images/inpaint",
    "/api/v7/images/fetch/{request_id}",
    "/api/v1/enterprise/images/img2img", "/api/v1/enterprise/images/text2img", "/api/v1/enterprise/images/inpaint",
    "/api/v1/enterprise/images/fetch", "/api/v1/enterprise/images/fetch/{request_id}",
    "/api/v1/enterprise/img2img", "/api/v1/enterprise/fetch", "/api/v1/enterprise/fetch/{request_id}",
    "/api/v1/enterprise/realtime/img2img", "/api/v1/enterprise/realtime/text2img",
    "/api/v1/enterprise/realtime/inpaint", "/api/v1/enterprise/realtime/fetch/{request_id}",
    "/api/v6/realtime/img2img", "/api/v6/realtime/text2img", "/api/v6/realtime/inpaint",
    "/api/v6/realtime/fetch/{request_id}",
    "/api/v1/enterprise/pony/img2img", "/api/v1/enterprise/pony/fetch", "/api/v1/enterprise/pony/fetch/{request_id}",
    "/api/v1/enterprise/update_s3", "/api/v1/enterprise/realtime/update_s3", "/api/v1/enterprise/pony/update_s3",
}
BODY = {"key": "k", "prompt": "a cat", "init_image": "https://example.com/cat.png", "mask_image": "aGk="}


def _route(path: str):
    return next(r for r in modelslab_routes() if r.path == path)


def _draft(path: str, settings: Settings, **fields):
    route = _route(path)
    req = route.body.model_validate({**BODY, **fields})
    limits = ModelLimits(min_size=64, max_size=2048, size_multiple=8)
    ctx = DraftContext(settings, route.default_model(settings), route.mode, limits_of=lambda _model: limits)
    return route, req.to_draft(ctx)


def test_the_table_serves_every_path_once():
    table = [r.path for r in modelslab_routes()]
    assert sorted(table) == sorted(set(table)) and set(table) == SERVED
    assert {r.path for r in build_router().routes} == SERVED


def test_every_answer_names_a_fetch_path_the_table_serves():
    fetches = {r.fetch for r in modelslab_routes() if r.handler is generate}
    assert fetches == {paths.V6_FETCH, paths.V7_FETCH, paths.ENTERPRISE_FETCH, paths.ENTERPRISE_IMAGES_FETCH,
                       paths.ENTERPRISE_REALTIME_FETCH, paths.V6_REALTIME_FETCH, paths.ENTERPRISE_PONY_FETCH}
    assert all(f"{fetch}/{{request_id}}" in SERVED for fetch in fetches)


def test_each_family_gets_its_own_defaults():
    settings = Settings(realtime_model="tiny-sd", realtime_steps=3, realtime_guidance=1.5, pony_model="tiny-sdxl")
    route, v6 = _draft("/api/v6/images/text2img", settings)
    assert (route.dialect, v6.mode, v6.model_id, v6.init_image) == ("modelslab", "txt2img", "demo-sd", "")
    route, inpaint = _draft("/api/v7/images/inpaint", settings)
    assert (inpaint.mode, inpaint.mask_image) == ("inpaint", "aGk=")
    route, realtime = _draft("/api/v6/realtime/img2img", settings, scheduler="DDIMScheduler")
    assert (route.dialect, realtime.model_id, realtime.steps, realtime.guidance_scale, realtime.scheduler,
            realtime.max_side, realtime.tomesd) == ("realtime", "tiny-sd", 3, 1.5, "LCMScheduler", 1024, False)
    route, pony = _draft("/api/v1/enterprise/pony/img2img", settings)
    assert (route.dialect, pony.model_id, pony.steps, pony.width, pony.height) == ("pony", "tiny-sdxl", 21, 512, 512)
    _, v7 = _draft("/api/v7/images/image-to-image", settings, aspect_ratio="16:9")
    assert (v7.width, v7.height) == (1024, 576)


@pytest.mark.parametrize("word", ["none", "None", " no ", "null", "NULL", "default", "", "  "])
def test_words_that_leave_a_choice_to_the_server(word):
    settings = Settings(realtime_scheduler=word)
    assert unset_word(word) is None
    _, draft = _draft("/api/v6/images/img2img", settings, scheduler=word, vae=word, algorithm_type=word)
    assert (draft.scheduler, draft.vae, draft.algorithm_type) == (None, None, None)
    _, realtime = _draft("/api/v1/enterprise/realtime/img2img", settings)
    assert realtime.scheduler is None


def test_a_named_choice_is_kept():
    assert unset_word(" DDIMScheduler ") == "DDIMScheduler" and unset_word(None) is None
    _, draft = _draft("/api/v6/images/img2img", Settings(), scheduler=" UniPCMultistepScheduler", vae="nonesuch")
    assert (draft.scheduler, draft.vae) == ("UniPCMultistepScheduler", "nonesuch")
