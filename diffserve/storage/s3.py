"""S3-compatible object storage (AWS S3, Cloudflare R2, MinIO, SeaweedFS...) through boto3.

Keys are stored under an optional prefix (ModelsLab's `image_directory`). Clients get either a URL
under the operator's public base URL (a CDN or a public bucket: the bucket's policy must allow
anonymous reads; no object ACLs are set) or, without one, a presigned GET URL that expires after
`presign_expiry_s`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta, timezone
from typing import Any
from urllib.parse import quote

from diffserve.core.errors import InvalidInput, NotFound
from diffserve.storage.base import StoredObject

_MISSING = {"NoSuchKey", "404", "NotFound"}
_LISTED_SECOND = timedelta(seconds=1)  # the resolution of a listing's LastModified


@dataclass(frozen=True)
class S3Config:
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    prefix: str = ""
    public_url: str | None = None
    presign_expiry_s: int = 24 * 3600

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", normalize_prefix(self.prefix))
        if self.public_url:
            object.__setattr__(self, "public_url", self.public_url.rstrip("/"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def public_view(self) -> dict[str, Any]:
        """What may be shown back to an admin: everything but the secret key."""
        view = self.to_dict()
        view.pop("secret_access_key")
        return view


def normalize_prefix(prefix: str | None) -> str:
    """'images' / '/images/' -> 'images/'; '' -> ''. Refuses '..' and empty path segments."""
    parts = [p for p in (prefix or "").strip().strip("/").split("/")]
    if parts == [""]:
        return ""
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidInput("image_directory must be a plain path like 'images' or 'outputs/diffserve'",
                           field="image_directory")
    return "/".join(parts) + "/"


class S3Storage:
    def __init__(self, config: S3Config, client: Any = None) -> None:
        self.config = config
        self._client = client or make_client(config)

    def put(self, key: str, data: bytes, content_type: str = "image/png") -> None:
        self._client.put_object(Bucket=self.config.bucket, Key=self._key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            obj = self._client.get_object(Bucket=self.config.bucket, Key=self._key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                raise NotFound(f"No such object: {key}") from None
            raise
        with obj["Body"] as body:
            return body.read()

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.config.bucket, Key=self._key(key))

    def url(self, key: str, base_url: str) -> str:
        full = self._key(key)
        if self.config.public_url:
            return f"{self.config.public_url}/{quote(full)}"
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.config.bucket, "Key": full}, ExpiresIn=self.config.presign_expiry_s
        )

    def list(self, prefix: str) -> Iterator[StoredObject]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.config.bucket, Prefix=self._key(prefix)
        )
        cut = len(self.config.prefix)
        for page in pages:
            for item in page.get("Contents", []):
                modified = item["LastModified"].astimezone(timezone.utc).replace(tzinfo=None)
                if not modified.microsecond:  # listed in whole seconds (SeaweedFS, AWS): written within the
                    modified += _LISTED_SECOND  # second after it; its end, so an age is never overstated
                yield StoredObject(item["Key"][cut:], modified)

    def check_access(self) -> None:
        """Raise InvalidInput (naming the bucket) unless the bucket can be reached with these settings."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.config.bucket)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "error")
            reason = {"403": "access denied (check the keys)", "404": "no such bucket"}.get(code, code)
            raise InvalidInput(f"Unable to access bucket {self.config.bucket!r}: {reason}", field="bucket") from None
        except (BotoCoreError, ValueError) as e:
            raise InvalidInput(f"Unable to reach S3 endpoint: {type(e).__name__}", field="endpoint_url") from None

    def _key(self, key: str) -> str:
        return self.config.prefix + key


def make_client(config: S3Config) -> Any:
    """A boto3 S3 client (thread-safe) for these settings; path-style addressing for custom endpoints."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint_url or None,
        region_name=config.region or "us-east-1",
        aws_access_key_id=config.access_key_id or None,
        aws_secret_access_key=config.secret_access_key or None,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if config.endpoint_url else "auto"},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )
