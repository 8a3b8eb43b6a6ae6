"""`POST /api/v1/enterprise/update_s3` (and its realtime/pony twins): where outputs are stored.

Admin keys only. The settings are checked against the bucket (a probe object is written and
deleted), saved in the database, and picked up by the API at once and by every worker within
`storage.refresh_s`, without a restart. The secret key is stored (the server must sign with it) but
never shown back.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from diffserve.core.errors import InvalidInput
from diffserve.storage.s3 import S3Config, S3Storage
from diffserve.api.auth import require_admin
from diffserve.api.body import parse_model
from diffserve.api.loose import LooseInt, LooseStr
from diffserve.api.modelslab.common import read_and_authenticate
from diffserve.api.modelslab.protocol import check_url

PROBE_KEY = ".diffserve-write-check"
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
MAX_EXPIRY_S = 7 * 24 * 3600  # SigV4's longest presigned URL


class UpdateS3Request(BaseModel):
    """ModelsLab's update_s3 fields, plus `bucket` and the presigned URL lifetime."""

    model_config = ConfigDict(extra="ignore")

    key: LooseStr = Field(None, description="An admin API key")
    public_url: LooseStr = Field(None, description="base URL the objects are public under (CDN or public bucket); "
                                                   "empty: answer presigned URLs")
    region_name: LooseStr = None
    endpoint_url: LooseStr = Field(None, description="S3-compatible endpoint (R2, MinIO...); empty: AWS")
    aws_access_key_id: LooseStr = None
    aws_secret_access_key: LooseStr = None
    image_directory: LooseStr = Field(None, description="key prefix inside the bucket, e.g. 'generations'")
    bucket: LooseStr = Field(None, description="the bucket name (bucket_name is accepted too)")
    bucket_name: LooseStr = None
    url_expiry: LooseInt = Field(None, description="lifetime of presigned URLs in seconds (default: the server's)")

    def to_config(self, default_expiry_s: int) -> S3Config:
        bucket = (self.bucket or self.bucket_name or "").strip()
        if not bucket:
            raise InvalidInput("bucket is required", field="bucket")
        if not _BUCKET.match(bucket):
            raise InvalidInput("bucket is not a valid bucket name", field="bucket")
        access, secret = _blank_none(self.aws_access_key_id), _blank_none(self.aws_secret_access_key)
        if bool(access) != bool(secret):
            raise InvalidInput("aws_access_key_id and aws_secret_access_key go together",
                               field="aws_secret_access_key" if access else "aws_access_key_id")
        expiry = self.url_expiry if self.url_expiry is not None else default_expiry_s
        if not 1 <= expiry <= MAX_EXPIRY_S:
            raise InvalidInput(f"url_expiry must be between 1 and {MAX_EXPIRY_S}", field="url_expiry")
        return S3Config(
            bucket=bucket,
            endpoint_url=_http_url("endpoint_url", self.endpoint_url),
            region=_blank_none(self.region_name),
            access_key_id=access,
            secret_access_key=secret,
            prefix=self.image_directory or "",
            public_url=_http_url("public_url", self.public_url),
            presign_expiry_s=expiry,
        )


def _blank_none(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _http_url(field: str, value: str | None) -> str | None:
    url = check_url(field, value)
    return url.rstrip("/") if url else None


def _check_and_probe(storage: S3Storage) -> None:
    storage.check_access()
    try:
        storage.put(PROBE_KEY, b"ok", "text/plain")
        storage.delete(PROBE_KEY)
    except Exception as e:  # botocore's errors: the admin needs to know writing does not work
        raise InvalidInput(f"Unable to write to bucket {storage.config.bucket!r}: {type(e).__name__}",
                           field="bucket") from None


async def update_s3(request: Request) -> dict[str, Any]:
    ds, body, key = await read_and_authenticate(request)
    require_admin(key)
    req = parse_model(UpdateS3Request, body)
    config = req.to_config(ds.settings.storage.presign_expiry_s)
    storage = S3Storage(config)
    await ds.offload(_check_and_probe, storage)
    delivery = ds.delivery
    assert delivery is not None
    await ds.offload(delivery.storage_config.save, {"backend": "s3", **config.to_dict()})
    delivery.storage.invalidate()
    return {"status": "success", "message": "S3 settings updated", "settings": config.public_view()}

