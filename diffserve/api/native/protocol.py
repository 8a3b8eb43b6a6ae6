"""The native job API's request body: the canonical request, field for field (core/request.py)."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from diffserve.core.request import RequestDraft


class JobCreate(RequestDraft):
    """POST /v1/jobs: the fields the engine takes, under their canonical names. Unknown fields are refused
    (this API is diffserve's own: a typo should not pass silently). Unset numbers take the model's
    defaults; `seed` unset picks one (returned in `meta.seed`)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str = Field("", description="registry id; empty: the server's default model")
    init_image: str = Field("", description="http(s) URL, base64 or a data: URI (not for mode txt2img)")
