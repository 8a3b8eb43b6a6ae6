"""The ModelsLab route table: every path of the dialect (v6, v7, enterprise, realtime, pony, their fetch forms,
request_count, update_s3) -> its request model, its defaults (the job's dialect, mode, default model and the
fetch path its answers name) and its handler. `build_router()` registers the table; handlers stay thin: parse,
authenticate, hand a draft to the service, render. (The enterprise management routes are api/management.)

    /api/v6/images/{img2img,text2img,inpaint}            v6                 fetch /api/v6/images/fetch[/{id}]
    /api/v1/enterprise/images/{img2img,text2img,inpaint}  v6 (the SDK's)     fetch .../images/fetch[/{id}]
    /api/v1/enterprise/img2img                            v6 (older page)    fetch /api/v1/enterprise/fetch[/{id}]
    /api/v7/images/{image-to-image,text-to-image,inpaint} v7 (the CLI's)     fetch /api/v7/images/fetch/{id}
    /api/{v6,v1/enterprise}/realtime/{img2img,text2img,inpaint}  realtime    fetch .../realtime/fetch/{id}
    /api/v1/enterprise/pony/img2img                       pony               fetch .../pony/fetch[/{id}]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from diffserve.config import Settings
from diffserve.api.body import json_body_doc, parse_model
from diffserve.api.modelslab import paths
from diffserve.api.modelslab.common import ModelsLabRoute, fetch, read_and_authenticate, submit_and_answer
from diffserve.api.modelslab.enterprise_storage import UpdateS3Request, update_s3
from diffserve.api.modelslab.pony import PonyImg2ImgRequest
from diffserve.api.modelslab.protocol import (DraftContext, FetchRequest, RequestCountRequest, V6Img2ImgRequest,
                                              V6InpaintRequest)
from diffserve.api.modelslab.realtime import RealtimeImg2ImgRequest, RealtimeInpaintRequest
from diffserve.api.modelslab.v7 import V7Img2ImgRequest

Handler = Callable[[Request, "Route", "str | None"], Awaitable[dict[str, Any] | JSONResponse]]


def engine_default(settings: Settings) -> str:
    return settings.engine.default_model


def realtime_model(settings: Settings) -> str:
    return settings.dialects.realtime_model


def pony_model(settings: Settings) -> str:
    return settings.dialects.pony_model


@dataclass(frozen=True)
class Route:
    """One path: its body model (parsed, and shown in /docs), its handler and its defaults."""

    path: str
    body: type[BaseModel]
    handler: Handler
    summary: str
    tag: str
    fetch: str = paths.V6_FETCH  # the fetch path this route's answers name (a fetch route: its own)
    dialect: str = "modelslab"  # the job's dialect: its webhook body, its stats
    mode: str = "img2img"  # img2img, txt2img or inpaint
    default_model: Callable[[Settings], str] = engine_default  # a request that names no model_id gets it


async def generate(request: Request, route: Route, _request_id: str | None) -> dict[str, Any]:
    """A page that queues a job: the body becomes a draft in the route's context, then submit-then-answer."""
    ds, body, key = await read_and_authenticate(request)
    req = parse_model(route.body, body)
    ctx = DraftContext(ds.settings, route.default_model(ds.settings), route.mode,
                       limits_of=lambda model_id: ds.registry.get(model_id).limits)
    draft = req.to_draft(ctx)  # type: ignore[attr-defined]  # every page model has to_draft(ctx)
    return await submit_and_answer(request, ds, key, route.dialect, draft,
                                   instant_response=bool(getattr(req, "instant_response", False)),
                                   fetch_path=route.fetch)


async def fetch_job(request: Request, route: Route, request_id: str | None) -> JSONResponse:
    """A job of this key, by the id in the path or `request_id` in the body. The answer holds only JSON's own
    types, so it is sent as it is: FastAPI's jsonable_encoder walk cost ~20x json.dumps on it (a fetch is polled)."""
    return JSONResponse(await fetch(request, request_id, route.fetch))


async def request_count(request: Request, _route: Route, _request_id: str | None) -> dict[str, Any]:
    ds, _body, key = await read_and_authenticate(request)
    assert ds.service.caps is not None  # build_state always gives the service its cap
    return {"status": "success", "processing_count": await ds.service.caps.processing_count(key)}


async def store_outputs_in_s3(request: Request, _route: Route, _request_id: str | None) -> dict[str, Any]:
    return await update_s3(request)


def _fetches(fetch: str, tag: str, what: str, *, by_body: bool = True) -> list[Route]:
    """A fetch path with the id in the path, and (most families) the same path with `request_id` in the body."""
    out = [Route(f"{fetch}/{{request_id}}", FetchRequest, fetch_job, f"Fetch {what}", tag, fetch)]
    if by_body:
        out.append(Route(fetch, FetchRequest, fetch_job, f"Fetch {what} (id in the body)", tag, fetch))
    return out


def _v6_pages(prefix: str, fetch: str, tag: str, names: dict[str, str] | None = None) -> list[Route]:
    """The v6 text2img and inpaint pages under `prefix` (names: a family's own page names)."""
    names = names or {}
    return [
        Route(f"{prefix}/{names.get('txt2img', 'text2img')}", V6Img2ImgRequest, generate, f"Text to image ({prefix})",
              tag, fetch, mode="txt2img"),
        Route(f"{prefix}/inpaint", V6InpaintRequest, generate, f"Inpainting ({prefix})", tag, fetch, mode="inpaint"),
    ]


def _realtime(prefix: str, fetch: str, where: str) -> list[Route]:
    tag, defaults = "ModelsLab realtime", {"dialect": "realtime", "default_model": realtime_model}
    return [
        Route(f"{prefix}/img2img", RealtimeImg2ImgRequest, generate,
              f"Realtime image to image ({where}: the server's few-step model)", tag, fetch, **defaults),
        Route(f"{prefix}/text2img", RealtimeImg2ImgRequest, generate, f"Realtime text to image ({prefix})", tag,
              fetch, mode="txt2img", **defaults),
        Route(f"{prefix}/inpaint", RealtimeInpaintRequest, generate, f"Realtime inpainting ({prefix})", tag, fetch,
              mode="inpaint", **defaults),
        *_fetches(fetch, tag, f"a realtime request ({where})", by_body=False),
    ]


def modelslab_routes() -> list[Route]:
    """The table, family by family."""
    v6, v7, ent = "ModelsLab v6", "ModelsLab v7", "ModelsLab enterprise"
    pony = {"dialect": "pony", "default_model": pony_model}
    return [
        # v6: the img2img page, its text2img and inpaint companions, fetch; the key's queue length
        Route(f"{paths.V6_IMAGES}/img2img", V6Img2ImgRequest, generate, "Image to image (ModelsLab v6)", v6),
        *_v6_pages(paths.V6_IMAGES, paths.V6_FETCH, v6),
        *_fetches(paths.V6_FETCH, v6, "a queued or finished request"),
        Route(f"{paths.V6}/processing/request_count", RequestCountRequest, request_count,
              "Queued and running requests of this key", v6),
        # v7 (ModelsLab's CLI): the v6 requests, img2img with v7's additions, the key in a `Key` header too
        Route(f"{paths.V7_IMAGES}/image-to-image", V7Img2ImgRequest, generate, "Image to image (ModelsLab v7)", v7,
              paths.V7_FETCH),
        *_v6_pages(paths.V7_IMAGES, paths.V7_FETCH, v7, {"txt2img": "text-to-image"}),
        *_fetches(paths.V7_FETCH, v7, "a request (v7)", by_body=False),
        # enterprise images (the official SDK's `Community(client, enterprise=True)`) and the older page
        Route(f"{paths.ENTERPRISE_IMAGES}/img2img", V6Img2ImgRequest, generate,
              "Image to image (ModelsLab enterprise, the SDK's path)", ent, paths.ENTERPRISE_IMAGES_FETCH),
        *_v6_pages(paths.ENTERPRISE_IMAGES, paths.ENTERPRISE_IMAGES_FETCH, ent),
        *_fetches(paths.ENTERPRISE_IMAGES_FETCH, ent, "a request (enterprise images)"),
        Route(f"{paths.ENTERPRISE}/img2img", V6Img2ImgRequest, generate, "Image to image (the older enterprise page)",
              ent, paths.ENTERPRISE_FETCH),
        *_fetches(paths.ENTERPRISE_FETCH, ent, "any enterprise request of this key"),
        # realtime: the server's realtime model and settings, under v6 and enterprise paths
        *_realtime(paths.ENTERPRISE_REALTIME, paths.ENTERPRISE_REALTIME_FETCH, "enterprise"),
        *_realtime(paths.V6_REALTIME, paths.V6_REALTIME_FETCH, "v6 path"),
        # pony (SDXL): the pony page's defaults and schedulers
        Route(f"{paths.ENTERPRISE_PONY}/img2img", PonyImg2ImgRequest, generate, "Pony (SDXL) image to image",
              "ModelsLab pony", paths.ENTERPRISE_PONY_FETCH, **pony),
        *_fetches(paths.ENTERPRISE_PONY_FETCH, "ModelsLab pony", "a pony request"),
        # where outputs are stored (admin), under each enterprise family
        *(Route(f"{prefix}/update_s3", UpdateS3Request, store_outputs_in_s3,
                "Store outputs in an S3-compatible bucket (admin)", "ModelsLab enterprise: server")
          for prefix in (paths.ENTERPRISE, paths.ENTERPRISE_REALTIME, paths.ENTERPRISE_PONY)),
    ]


def _endpoint(route: Route) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A FastAPI endpoint for one row (with the `request_id` path parameter where the path has one). Its answer
    is a dict in /openapi.json; a handler may return it as a JSONResponse already (fetch), which is sent as is."""
    if "{request_id}" in route.path:
        async def by_path(request: Request, request_id: str) -> dict[str, Any]:
            return await route.handler(request, route, request_id)  # type: ignore[return-value]
        return by_path

    async def endpoint(request: Request) -> dict[str, Any]:
        return await route.handler(request, route, None)  # type: ignore[return-value]
    return endpoint


def build_router(routes: list[Route] | None = None) -> APIRouter:
    """One APIRouter for the table (errors answered in the vendor's shape by ModelsLabRoute)."""
    router = APIRouter(route_class=ModelsLabRoute)
    for route in routes if routes is not None else modelslab_routes():
        router.add_api_route(route.path, _endpoint(route), methods=["POST"], summary=route.summary,
                             tags=[route.tag], openapi_extra=json_body_doc(route.body),
                             name=f"{route.handler.__name__}{route.path.replace('/', '_')}")
    return router
