"""Delivery headers, in the Standard Webhooks layout (https://www.standardwebhooks.com):

    webhook-id:        the delivery's id, the same on every retry (receivers dedupe on it)
    webhook-timestamp: Unix seconds of this attempt
    webhook-signature: "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))   (only with a secret)

The key is the secret's UTF-8 bytes, or, for a secret written `whsec_<base64>` (the Standard Webhooks
form), the base64-decoded bytes, so the `standardwebhooks` libraries can verify our deliveries too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a webhook secret starting with whsec_ must be base64 after the prefix") from None
    return secret.encode()


def signature(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode()


def delivery_headers(delivery_id: str, body: bytes, secret: str | None, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "diffserve-webhooks",
        "Connection": "close",  # pinned requests must not share pooled connections (media/fetch.py)
        "webhook-id": delivery_id,
        "webhook-timestamp": str(ts),
    }
    if secret:
        headers["webhook-signature"] = signature(secret, delivery_id, ts, body)
    return headers
