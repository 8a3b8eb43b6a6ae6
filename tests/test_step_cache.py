"""Per-request step caching inside step-level batching (engine/stepcache): DeepCache for the UNet families,
First-Block Cache for Flux. Each row keeps its own cache and decision, so a request alone gives what it gives
in a batch beside other (cached and uncached) requests; the shallow path recomputes exactly what the full
UNet computes from the same deep features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffserve.core.errors import InvalidInput
from diffserve.core.request import RequestDraft
from diffserve.core.step_cache import StepCache
from diffserve.engine.generate import Engine
from diffserve.engine.models.registry import ModelRegistry
from diffserve.engine.request_rules import resolve_controls

from .family_models import build_tiny, tiny_ids
from .test_batching import TOLERANCE, init_image, max_diff, request, run_batched

DEEPCACHE_MODELS = (*tiny_ids("sd", "sdxl"), "demo-sd")
CACHED_MODELS = (*DEEPCACHE_MODELS, *tiny_ids("flux"))
# the tiny random Flux's first-block residual changes 30-55 % a step: a threshold that reuses some
METHOD = {"tiny-flux": StepCache(method="fbcache", threshold=0.5)}


@pytest.fixture(scope="module")
def engine(models_root: Path, one_torch_thread) -> Engine:
    build_tiny(models_root, *tiny_ids("sd", "sdxl", "flux"))
    return Engine(ModelRegistry.load(models_root / "no-models.json", models_root), safety_checker="tiny",
                  models_dir=models_root, max_models=len(CACHED_MODELS), dtype="fp32")


def cache_of(model: str) -> StepCache:
    return METHOD.get(model, StepCache(method="deepcache", interval=3))


@pytest.mark.parametrize("model", CACHED_MODELS)
def test_a_cached_request_alone_is_the_same_in_a_batch(engine, model):
    """Cached rows (own interval / threshold, steps, strength, CFG or not) beside an uncached one."""
    image = init_image()
    reqs = [request(model, prompt="a cat", seed=3, steps=9, step_cache=cache_of(model)),
            request(model, prompt="a dog", seed=4, steps=6, strength=0.9, guidance_scale=1.0),
            request(model, prompt="a boat", seed=5, steps=7, negative_prompt="blurry", samples=2,
                    step_cache=StepCache(method="deepcache", interval=2) if model in DEEPCACHE_MODELS
                    else StepCache(method="fbcache", threshold=0.4))]
    batched = run_batched(engine, reqs, image, join_every=2)
    for i, req in enumerate(reqs):
        result = engine.generate(req, image)
        diffs = [max_diff(a, b) for a, b in zip(result.images, batched[i])]
        assert max(diffs) <= TOLERANCE, (i, diffs)
        if req.step_cache is not None:
            assert result.step_cache["method"] == req.step_cache.method
            assert result.step_cache["full_steps"] >= 1
            assert result.step_cache["cached_steps"] >= (1 if i == 0 else 0)


@pytest.mark.parametrize("model", DEEPCACHE_MODELS)
def test_deepcache_skips_steps_and_stays_near_the_uncached_image(engine, model):
    image = init_image()
    plain = engine.generate(request(model, steps=10, strength=1.0), image)
    cached = engine.generate(request(model, steps=10, strength=1.0, step_cache=cache_of(model)), image)
    assert plain.step_cache == "off"
    ran = cached.step_cache
    total = ran["full_steps"] + ran["cached_steps"]  # 10 (PNDM: 11, its first step twice)
    assert ran["method"] == "deepcache" and ran["interval"] == 3 and total in (10, 11)
    assert ran["full_steps"] == -(-total // 3)  # steps 0, 3, 6, 9 full
    assert 0 < max_diff(plain.images[0], cached.images[0])


@pytest.mark.parametrize("model", DEEPCACHE_MODELS)
def test_the_shallow_path_on_fresh_features_is_the_full_unet(engine, model):
    from diffserve.engine.stepcache.deepcache import capture, shallow_forward

    unet = engine.pipelines.get(model).pipe.unet
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=gen)
    timestep = torch.tensor([500.0, 20.0])
    cond = {"encoder_hidden_states": torch.randn(2, 7, unet.config.cross_attention_dim, generator=gen)}
    if unet.config.time_cond_proj_dim is not None:
        cond["timestep_cond"] = torch.randn(2, unet.config.time_cond_proj_dim, generator=gen)
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        cond["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled, generator=gen),
                                     "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.inference_mode():
        with capture(unet) as seen:
            full = unet(sample, timestep, **cond, return_dict=False)[0]
        shallow = shallow_forward(unet, sample, timestep, seen[-1], **cond)
    torch.testing.assert_close(shallow, full, rtol=1e-4, atol=1e-5)


def test_the_setting_is_checked_and_resolved_at_submit(models_root):
    registry = ModelRegistry.load(models_root / "no-models.json", models_root)

    def resolve(model: str, **fields):
        draft = RequestDraft(model_id=model, prompt="p", init_image="x", **fields)
        return resolve_controls(draft, registry.get(model)).step_cache

    assert resolve("tiny-sd") == StepCache(method="off")
    assert resolve("tiny-sd", step_cache={"method": "deepcache"}).describe() == {"method": "deepcache",
                                                                                 "interval": 3}
    assert resolve("tiny-flux", step_cache="fbcache").threshold == 0.1
    with pytest.raises(InvalidInput, match="step_cache deepcache is not supported by model tiny-flux"):
        resolve("tiny-flux", step_cache={"method": "deepcache", "interval": 2})
    with pytest.raises(InvalidInput, match="image-to-image"):
        resolve("tiny-sd", step_cache="deepcache", mode="txt2img")
    with pytest.raises(ValueError, match="threshold applies to method fbcache only"):
        StepCache.model_validate({"method": "deepcache", "threshold": 0.1})


def test_fbcache_computes_the_transformer_until_it_reuses(engine):
    """A first step (nothing cached) is FluxTransformer2DModel's own output; a threshold of 1 then reuses."""
    from diffserve.engine.stepcache.fbcache import FBCacheRow, forward

    transformer = engine.pipelines.get("tiny-flux").pipe.transformer
    config, gen = transformer.config, torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(3, 16, config.in_channels, generator=gen),
                  timestep=torch.tensor([0.9, 0.5, 0.5]),
                  encoder_hidden_states=torch.randn(3, 5, config.joint_attention_dim, generator=gen),
                  pooled_projections=torch.randn(3, config.pooled_projection_dim, generator=gen),
                  txt_ids=torch.zeros(5, 3), img_ids=torch.randn(16, 3, generator=gen))
    if config.guidance_embeds:
        inputs["guidance"] = torch.tensor([3.5, 3.5, 3.5])
    one, two = FBCacheRow(1.0), FBCacheRow(1.0)
    with torch.inference_mode():
        full = transformer(**inputs, return_dict=False)[0]
        first = forward(transformer, [(1, one), (2, two)], **inputs)
        again = forward(transformer, [(1, one), (2, None)], **inputs)
    torch.testing.assert_close(first, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, full, rtol=1e-4, atol=1e-5)  # same inputs: the cached residual is exact
    assert (one.full_steps, one.cached_steps, two.full_steps) == (1, 1, 1)


def test_the_jobs_meta_says_how_many_steps_ran_full_and_cached(engine, tmp_path):
    """Through the worker's runner (a job alone) and its batcher (a cached job beside an uncached one): the job's
    run meta, and the native API's meta.step_cache, count the steps that ran the whole UNet and the cached path."""
    import io

    from diffserve.api.native.render import render_job
    from diffserve.config import BatchingSettings
    from diffserve.jobqueue.local import LocalQueue
    from diffserve.storage.local import LocalStorage
    from diffserve.store.db import make_db_engine
    from diffserve.store.jobs import JobStore, new_output_token
    from diffserve.store.schema import ensure_schema
    from diffserve.store.workers import WorkerStore
    from diffserve.workers.batcher import Batcher
    from diffserve.service.submit import LiveState
    from diffserve.workers.runner import JobRunner

    db = make_db_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    ensure_schema(db)
    storage, queue, jobs = LocalStorage(tmp_path / "files"), LocalQueue(db), JobStore(db)
    png = io.BytesIO()
    init_image().save(png, format="PNG")
    storage.put("inputs/k.png", png.getvalue())
    WorkerStore(db).register("w1", 1)
    runner = JobRunner("w1", jobs.ledger.using(queue), queue, storage, engine, WorkerStore(db))

    def submit(**over):
        req = request("tiny-sd", init_image_key="inputs/k.png", steps=7, strength=1.0, **over)
        return jobs.ledger.using(queue).create(key_id="k", dialect="native", request=req,
                                               output_token=new_output_token())

    cached = StepCache(method="deepcache", interval=3)
    alone = submit(step_cache=cached)
    assert queue.claim("w1", 0) == alone.id
    runner.run(runner.start(alone.id))
    first, plain = submit(step_cache=cached), submit(seed=9)
    assert queue.claim("w1", 0) == first.id
    assert Batcher(runner, BatchingSettings(max_wait_ms=2000)).run(runner.start(first.id))
    ran = {job.id: jobs.get(job.id) for job in (alone, first, plain)}
    assert all(job.status.value == "succeeded" for job in ran.values()), ran
    # tiny-sd's PNDM runs 7 steps as 8 UNet calls (its first twice): calls 0, 3, 6 full, the other 5 cached
    counts = {"method": "deepcache", "interval": 3, "full_steps": 3, "cached_steps": 5}
    assert ran[alone.id].dialect_params["run"]["step_cache"] == counts
    assert ran[first.id].dialect_params["run"]["step_cache"] == counts
    assert ran[first.id].dialect_params["run"]["batch_size"] == 2  # it shared its ticks with the uncached job
    assert ran[plain.id].dialect_params["run"]["step_cache"] == "off"
    meta = render_job(ran[first.id], storage, "http://x", LiveState(0, 0, None, False))["meta"]
    assert meta["step_cache"] == counts
