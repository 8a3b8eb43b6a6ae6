"""`POST /api/v6/processing/request_count {key}` -> how many of this key's jobs are queued or running."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from diffserve.api.body import json_body_doc
from diffserve.api.loose import LooseStr
from diffserve.api.modelslab.common import read_and_authenticate
from diffserve.api.modelslab.router import ModelsLabRoute

router = APIRouter(route_class=ModelsLabRoute, tags=["ModelsLab v6"])


class RequestCountRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: LooseStr = None


@router.post("/api/v6/processing/request_count", openapi_extra=json_body_doc(RequestCountRequest),
             summary="Queued and running requests of this key")
async def request_count(request: Request) -> dict[str, Any]:
    ds, _body, key = await read_and_authenticate(request)
    assert ds.delivery is not None
    return {"status": "success", "processing_count": await ds.delivery.caps.processing_count(key)}
