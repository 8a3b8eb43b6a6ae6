"""ModelsLab's webhook bodies (companion-endpoints.md), shared by v6, enterprise realtime and pony:

    success: {"status":"success","id":..,"output":[..],"generationTime":..,"track_id":"..","meta":{..}}
    failure: {"status":"failed","id":..,"message":"..","track_id":".."}

`output` holds what the client's answer would hold (URLs, or base64 when it asked for base64);
`proxy_links` always the URLs.
"""

from __future__ import annotations

from typing import Any

from diffserve.core.job import Job, JobStatus
from diffserve.storage.base import Storage
from diffserve.api.modelslab.render import Links, success


def webhook_payload(job: Job, storage: Storage, base_url: str) -> dict[str, Any]:
    if job.status is JobStatus.SUCCEEDED:
        answer = success(job, Links(base_url, storage))
        return {
            "status": "success",
            "id": job.id,
            "output": answer["output"],
            "proxy_links": answer["proxy_links"],
            "generationTime": answer["generationTime"],
            "nsfw_content_detected": answer["nsfw_content_detected"],
            "track_id": job.request.track_id,
            "meta": answer["meta"],
        }
    return {
        "status": "failed",
        "id": job.id,
        "message": job.error or "Image generation failed",
        "track_id": job.request.track_id,
    }
