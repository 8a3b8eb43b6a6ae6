"""Serving images: `<base_url>/generations/...` and `<base_url>/temp/generations/...`.

Files on the data dir are served as they are, except a job's link names (`Job.link_keys`:
`<token>-<index>.png`), which are resolved through the job on every request: they answer 404 until the job
succeeded, then the image of the attempt that won (`job.outputs[index]`): its file on this disk, or, where the
image lives elsewhere (S3), its bytes through this server, from the backend of the storage settings it was
written under (`Job.storage_version`; storage/configured.py), not necessarily the current one. An early link
(ModelsLab's `future_links`, handed out while an attempt runs) so gets the image of the job's final answer even
when that attempt is handed on and a later one wins; and a link, once it answered an image, answers the same
image for as long as it is kept: a succeeded job's outputs never change (store/ledger.py finishes a job once),
and an attempt that lost never shows under a link name, even where it wrote a file of that name late.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from diffserve.core.errors import NotFound
from diffserve.core.job import JobStatus
from diffserve.storage.configured import holding

LINK_NAME = re.compile(r"(?P<token>[A-Za-z0-9_-]+)-(?P<index>\d+)\.png")


def served_url(base_url: str, key: str) -> str:
    """The URL this server answers `key` at (whatever the storage backend: a link name is resolved here)."""
    return f"{base_url.rstrip('/')}/{key}"


class OutputFiles(StaticFiles):
    """The files under `<data_dir>/<prefix>`, mounted at `/<prefix>`; link names resolved through their job."""

    def __init__(self, *, directory: Path, prefix: str) -> None:
        super().__init__(directory=directory)
        self.prefix = prefix  # "generations/" or "temp/generations/": the storage keys' start

    async def get_response(self, path: str, scope: Scope) -> Response:
        name = LINK_NAME.fullmatch(path)
        if name is None:  # another image (a later attempt's, an upload, a converted copy): the file as it is
            return await super().get_response(path, scope)
        ds = scope["app"].state.ds
        job = await ds.offload(ds.service.jobs.by_token, name["token"])
        if job is None:  # no job's name: a file that only looks like one (an upload's random name)
            return await super().get_response(path, scope)
        index = int(name["index"])
        links = job.link_keys()
        if job.status is not JobStatus.SUCCEEDED or index >= min(len(links), len(job.outputs)) \
                or links[index] != self.prefix + path:
            raise HTTPException(status_code=404)
        key = job.outputs[index]
        if key.startswith(self.prefix) and "/" not in key[len(self.prefix):]:
            try:
                return await super().get_response(key[len(self.prefix):], scope)  # the winner's file here
            except HTTPException as e:
                if e.status_code != 404:
                    raise
        try:  # stored elsewhere: where the job's record says (S3, maybe under settings replaced since)
            data = await ds.offload(lambda: holding(ds.service.storage, job).get(key))
        except NotFound:
            raise HTTPException(status_code=404) from None
        return Response(data, media_type="image/png")
