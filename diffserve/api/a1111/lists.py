"""A1111's listing and housekeeping endpoints, answered with what diffserve has.

Lists: `upscalers` (the non-neural ones: None, Lanczos, Nearest; /extra-single-image runs them),
`latent-upscale-modes` (A1111's names, which the hires fix takes: api/a1111/hires.py), `loras`, `sd-vae` and `embeddings` (the
registry's assets, by id: a server path is nobody's business), `hypernetworks`, `face-restorers` and
`realesrgan-models` (empty: none ships), `prompt-styles` (the style presets), `cmd-flags` (the few that describe
diffserve), `memory` (RAM from /proc/meminfo; the API process has no torch, so `cuda` carries an error, as A1111's
answer does when it has no CUDA). Housekeeping: `refresh-checkpoints` re-reads the registry file;
`unload-checkpoint` (workers unload every model between jobs) and `reload-checkpoint` (workers drop the key's
checkpoint, read again from disk on its next job) need an admin key; `skip` ends the caller's running job like
`/interrupt`, keeping the image so far (diffserve runs a batch as one job: there is no single image to skip).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from diffserve.api.a1111.hires import LATENT_MODES
from diffserve.api.a1111.scripts import UPSCALERS
from diffserve.api.a1111.router import A1111Route, _key, finish_running
from diffserve.api.auth import require_admin
from diffserve.management.server import ServerAdmin
from diffserve.service.styles import style_presets

router = APIRouter(prefix="/sdapi/v1", route_class=A1111Route, tags=["AUTOMATIC1111"])



@router.get("/upscalers", summary="Upscalers (the non-neural ones)")
async def upscalers(request: Request) -> list[dict[str, Any]]:
    await _key(request)
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for name in UPSCALERS]


@router.get("/latent-upscale-modes", summary="Latent upscale modes (the hires fix's, run in pixel space)")
async def latent_upscale_modes(request: Request) -> list[dict[str, Any]]:
    await _key(request)
    return [{"name": name} for name in LATENT_MODES]


async def _assets(request: Request, kind: str) -> list[tuple[str, Any]]:
    ds, _ = await _key(request)
    return await ds.offload(ds.registry.entries, kind)


@router.get("/loras", summary="The registry's LoRAs")
async def loras(request: Request) -> list[dict[str, Any]]:
    return [{"name": asset_id, "alias": asset_id, "path": asset_id, "metadata": {}}
            for asset_id, _ in await _assets(request, "loras")]


@router.get("/sd-vae", summary="The registry's VAEs")
async def sd_vae(request: Request) -> list[dict[str, Any]]:
    return [{"model_name": asset_id, "filename": asset_id} for asset_id, _ in await _assets(request, "vaes")]


@router.get("/embeddings", summary="The registry's textual-inversion embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    loaded = {asset_id: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                         "vectors": None} for asset_id, _ in await _assets(request, "embeddings")}
    return {"loaded": loaded, "skipped": {}}


@router.get("/hypernetworks", summary="Hypernetworks (none)")
async def hypernetworks(request: Request) -> list[dict[str, Any]]:
    await _key(request)
    return []


@router.get("/face-restorers", summary="Face restorers (none)")
async def face_restorers(request: Request) -> list[dict[str, Any]]:
    await _key(request)
    return []


@router.get("/realesrgan-models", summary="RealESRGAN models (none)")
async def realesrgan_models(request: Request) -> list[dict[str, Any]]:
    await _key(request)
    return []


@router.get("/prompt-styles", summary="The style presets")
async def prompt_styles(request: Request) -> list[dict[str, Any]]:
    ds, _ = await _key(request)
    presets = await ds.offload(style_presets)
    return [{"name": name, "prompt": prompt, "negative_prompt": negative}
            for name, (prompt, negative) in presets.items()]


@router.get("/cmd-flags", summary="The command-line flags that describe diffserve")
async def cmd_flags(request: Request) -> dict[str, Any]:
    ds, _ = await _key(request)
    return {"api": True, "nowebui": True, "ckpt": ds.settings.engine.default_model, "api_auth": None,
            "api_log": False, "skip_torch_cuda_test": True, "disable_safe_unpickle": False,
            "hide_ui_dir_config": True, "freeze_settings": False, "enable_insecure_extension_access": False}


def meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """RAM in bytes, A1111's shape: free (MemAvailable), used, total. Empty where /proc/meminfo is missing."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    kib = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            kib[name] = int(rest.split()[0]) * 1024
    total, free = kib.get("MemTotal", 0), kib.get("MemAvailable", kib.get("MemFree", 0))
    return {"free": free, "used": total - free, "total": total} if total else {}


@router.get("/memory", summary="RAM of the API's machine (CUDA lives in the workers)")
async def memory(request: Request) -> dict[str, Any]:
    ds, _ = await _key(request)
    ram = await ds.offload(meminfo)
    return {"ram": ram or {"error": "/proc/meminfo is not readable here"},
            "cuda": {"error": "the API process does not use CUDA; GPUs are in the workers (see /health)"}}


@router.post("/refresh-checkpoints", summary="Re-read the model registry file")
async def refresh_checkpoints(request: Request) -> None:
    ds, _ = await _key(request)
    await ds.offload(ds.registry.refresh)


def _server(ds: Any) -> ServerAdmin:
    return ServerAdmin(ds.service.jobs, ds.service.queue, ds.workers, ds.control)


@router.post("/unload-checkpoint", summary="Workers unload every model between jobs (admin key)")
async def unload_checkpoint(request: Request) -> None:
    ds, key = await _key(request)
    require_admin(key)
    await ds.offload(_server(ds).clear_cache)


@router.post("/reload-checkpoint", summary="Workers drop the key's checkpoint; its next job reads it again")
async def reload_checkpoint(request: Request) -> None:
    ds, key = await _key(request)
    require_admin(key)
    options = await ds.offload(ds.key_options.get, key.key_id)
    model_id = str(options.get("sd_model_checkpoint") or ds.settings.engine.default_model)
    await ds.offload(_server(ds).drop_models, [model_id])


@router.post("/skip", summary="End the caller's running job now, keeping the image so far (a batch is one job)")
async def skip(request: Request) -> dict[str, Any]:
    return await finish_running(request)
