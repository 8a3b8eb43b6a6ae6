"""ModelsLab enterprise server management (admin keys only), under /api/v1/enterprise and the same under
its realtime/ and pony/ families; plus v6 `base64_to_url` (any key) and `images/model_reload` (admin).

Thin: parse, authenticate, check the role, call ServerAdmin / ModelAdmin, answer in ModelsLab's shape.
"""

from __future__ import annotations

import io
import secrets
from typing import Any, Callable

from fastapi import APIRouter, Request
from PIL import Image

from diffserve.management.server import ServerAdmin
from diffserve.core.errors import InvalidInput
from diffserve.core.job import TEMP_PREFIX
from diffserve.core.request import SCHEDULERS
from diffserve.media.decode import decode_image
from diffserve.media.inputs import decode_base64
from diffserve.management.models import ModelAdmin
from diffserve.storage.local import PUBLIC_PREFIX
from diffserve.store.keys import ApiKey
from diffserve.api.auth import require_admin
from diffserve.api.body import json_body_doc, parse_model
from diffserve.api.modelslab.common import read_and_authenticate
from diffserve.api.modelslab.common import ModelsLabRoute
from diffserve.api.modelslab.pony import SCHEDULERS as PONY_SCHEDULERS
from diffserve.api.state import AppState
from diffserve.api.management.protocol import (
    BASE64_TO_URL_MAX_BYTES,
    Base64ToUrlRequest,
    KeyOnly,
    LoadModelRequest,
    LoadVaeRequest,
    ModelIdRequest,
    UploadImageRequest,
)

router = APIRouter(route_class=ModelsLabRoute, tags=["ModelsLab enterprise: server"])

# /images: where ModelsLab's SDK (`Community(client, enterprise=True)`) sends its management calls
PREFIXES = ("/api/v1/enterprise", "/api/v1/enterprise/realtime", "/api/v1/enterprise/pony",
            "/api/v1/enterprise/images")
IMAGE_TYPES = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "MPO": ("jpg", "image/jpeg"),
               "WEBP": ("webp", "image/webp"), "GIF": ("gif", "image/gif"), "BMP": ("bmp", "image/bmp")}


def management(name: str, body: type, summary: str) -> Callable:
    """Register one management endpoint under every enterprise family's prefix."""

    def register(handler: Callable) -> Callable:
        for prefix in PREFIXES:
            router.add_api_route(f"{prefix}/{name}", handler, methods=["POST"], summary=f"{summary} (admin)",
                                 openapi_extra=json_body_doc(body), name=f"{name}{prefix.replace('/', '_')}")
        return handler

    return register


async def _admin_request(request: Request) -> tuple[AppState, dict[str, Any], ApiKey]:
    ds, body, key = await read_and_authenticate(request)
    require_admin(key)
    return ds, body, key


def _server(ds: AppState) -> ServerAdmin:
    return ServerAdmin(ds.service.jobs, ds.service.queue, ds.workers, ds.control)


def _models(request: Request, ds: AppState) -> ModelAdmin:
    """One per app: it remembers downloads and warm-up jobs in progress."""
    admin = getattr(request.app.state, "model_admin", None)
    if admin is None:
        admin = request.app.state.model_admin = ModelAdmin(ds.settings, ds.registry, ds.service, ds.workers,
                                                           _server(ds))
    return admin


@management("load_model", LoadModelRequest, "Load a model (hub id, local path or checkpoint URL)")
async def load_model(request: Request) -> dict[str, Any]:
    ds, body, key = await _admin_request(request)
    spec = parse_model(LoadModelRequest, body).to_spec()
    return await _models(request, ds).load_model(key, spec)


@management("verify_model", ModelIdRequest, "Does a model exist, and is it loaded")
async def verify_model(request: Request) -> dict[str, Any]:
    ds, body, _ = await _admin_request(request)
    model_id = parse_model(ModelIdRequest, body).required_model_id()
    return await ds.offload(_models(request, ds).verify, model_id)


@management("get_all_models", KeyOnly, "Every model of this server")
async def get_all_models(request: Request) -> dict[str, Any]:
    ds, _, _ = await _admin_request(request)
    details = await ds.offload(_models(request, ds).all_models)
    return {"status": "success", "models": [m["model_id"] for m in details], "model_details": details}


@management("delete_model", ModelIdRequest, "Delete a model loaded through the API")
async def delete_model(request: Request) -> dict[str, Any]:
    ds, body, _ = await _admin_request(request)
    model_id = parse_model(ModelIdRequest, body).required_model_id()
    await ds.offload(_models(request, ds).delete, model_id)
    return {"status": "success", "message": f"Model {model_id} deleted"}


@management("load_vae", LoadVaeRequest, "Load a VAE that requests can name in `vae`")
async def load_vae(request: Request) -> dict[str, Any]:
    ds, body, _ = await _admin_request(request)
    req = parse_model(LoadVaeRequest, body)
    vae_id, vae_url, vae_type = req.checked()
    return await _models(request, ds).load_vae(vae_id, vae_url, vae_type, (req.config or "").strip() or None)


@management("schedulers_list", KeyOnly, "Schedulers a request may name")
async def schedulers_list(request: Request) -> dict[str, Any]:
    await _admin_request(request)
    names = PONY_SCHEDULERS if "/pony/" in request.url.path else SCHEDULERS
    return {"status": "success", "schedulers": list(names)}


@management("upload_image", UploadImageRequest, "Store a base64 image and get its URL")
async def upload_image(request: Request) -> dict[str, Any]:
    ds, body, _ = await _admin_request(request)
    req = parse_model(UploadImageRequest, body)
    url = await _store_base64(ds, request, req.base64_image, "base64_image", ds.settings.images.max_bytes,
                              f"{PUBLIC_PREFIX}/uploads/")
    return {"status": "success", "message": "Image uploaded", "link": url, "output": [url]}


@management("system_details", KeyOnly, "Models loaded, queue length and time, workers")
async def system_details(request: Request) -> dict[str, Any]:
    ds, _, _ = await _admin_request(request)
    available = len(await ds.offload(ds.registry.ids))
    return await ds.offload(_server(ds).system_details, available)


@management("clear_cache", KeyOnly, "Unload every model from every worker")
async def clear_cache(request: Request) -> dict[str, Any]:
    ds, _, _ = await _admin_request(request)
    told = await ds.offload(_server(ds).clear_cache)
    return {"status": "success", "message": f"Cache cleared: {told} workers unload their models between jobs"}


@management("clear_queue", KeyOnly, "Cancel every queued request (running ones finish)")
async def clear_queue(request: Request) -> dict[str, Any]:
    ds, _, _ = await _admin_request(request)
    cancelled = await ds.offload(_server(ds).clear_queue)
    return {"status": "success", "message": f"Queue cleared: {len(cancelled)} queued requests cancelled",
            "cancelled": cancelled}


@management("update", KeyOnly, "Update the server software (diffserve: the operator upgrades it)")
async def update(request: Request) -> dict[str, Any]:
    await _admin_request(request)
    from importlib.metadata import version

    return {"status": "success", "version": version("diffserve"),
            "message": "Nothing was changed: diffserve is upgraded by its operator (git pull, then make serve, "
                       "which installs from the lock and restarts); running servers keep their version"}


@management("restart_server", KeyOnly, "Restart the workers (no job is lost)")
async def restart_server(request: Request) -> dict[str, Any]:
    ds, _, _ = await _admin_request(request)
    told = await ds.offload(_server(ds).restart_workers)
    return {"status": "success",
            "message": f"Restarting {told} workers after their current job; queued requests stay queued"}


@router.post("/api/v6/images/model_reload", openapi_extra=json_body_doc(ModelIdRequest), tags=["ModelsLab v6"],
             summary="Reload a model from its files on its next request (admin)")
async def model_reload(request: Request) -> dict[str, Any]:
    ds, body, _ = await _admin_request(request)
    model_id = parse_model(ModelIdRequest, body).required_model_id()
    await ds.offload(_models(request, ds).reload, model_id)
    return {"status": "success", "message": f"Model {model_id} is reloaded on its next request"}


@router.post("/api/v6/base64_to_url", openapi_extra=json_body_doc(Base64ToUrlRequest), tags=["ModelsLab v6"],
             summary="Store a base64 image (max 5 MB) at a URL valid for 24 hours")
async def base64_to_url(request: Request) -> dict[str, Any]:
    ds, body, _ = await read_and_authenticate(request)  # any key: it only stores the caller's own image
    req = parse_model(Base64ToUrlRequest, body)
    url = await _store_base64(ds, request, req.base64_string, "base64_string", BASE64_TO_URL_MAX_BYTES,
                              f"{TEMP_PREFIX}{PUBLIC_PREFIX}/")
    return {"status": "success", "id": url.rsplit("/", 1)[1].split(".")[0], "output": [url],
            "message": "The URL is valid for 24 hours"}


async def _store_base64(ds: AppState, request: Request, value: str | None, field: str, max_bytes: int,
                        prefix: str) -> str:
    """Decode (strictly), check it is an image, store the bytes as sent under an unguessable name."""
    if not value or not value.strip():
        raise InvalidInput(f"{field} is required", field=field)
    limits = ds.settings.images.model_copy(update={"max_bytes": min(max_bytes, ds.settings.images.max_bytes)})

    def decode() -> tuple[bytes, str, str]:
        data = decode_base64(value, field=field, limits=limits)
        decode_image(data, field=field, limits=limits)  # a real, bounded image, or a clear error
        ext, content_type = IMAGE_TYPES[Image.open(io.BytesIO(data)).format or "PNG"]
        return data, ext, content_type

    data, ext, content_type = await ds.offload(decode)
    key = f"{prefix}{secrets.token_urlsafe(16)}.{ext}"
    base_url = ds.base_url(request)

    def store() -> str:  # one backend for the object and its URL, even if update_s3 switches it meanwhile
        backend = ds.delivery.storage.current()  # a settings re-read and S3 presigning: off the event loop
        backend.put(key, data, content_type=content_type)
        return backend.url(key, base_url)

    return await ds.offload(store)
