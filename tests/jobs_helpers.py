"""Shared by the job API, CLI and playground tests: a key's client and waiting for job states."""

from __future__ import annotations

import base64

from . import web
from .servers import png_bytes
from .waiting import wait_until


def data_uri(width: int = 64, height: int = 64) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(width, height)).decode()


class Jobs:
    def __init__(self, server, key: str) -> None:
        self.server, self.key = server, key
        self.http = web.client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def submit(self, **body) -> dict:
        body.setdefault("prompt", "a red bicycle")
        body.setdefault("init_image", data_uri())
        r = self.http.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return r.json()

    def get(self, job_id: int) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: int, predicate, timeout: float = 120) -> dict:
        return wait_until(lambda: self.get(job_id), timeout, every=0.05, accept=predicate,
                          what=f"job {job_id}: {getattr(predicate, '__qualname__', predicate)}")

    def done(self, job_id: int, timeout: float = 120) -> dict:
        return self.wait(job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout)


LONG = dict(init_image=data_uri(512, 512), steps=50, strength=1.0, scheduler="DDIMScheduler")  # tiny-sd at 512 px: several seconds
# a job that still runs a few seconds after it is seen running, at a quarter of LONG's pixels (for tests that
# run it to the end, twice when a worker is killed under it)
MEDIUM = dict(LONG, init_image=data_uri(256, 256))
