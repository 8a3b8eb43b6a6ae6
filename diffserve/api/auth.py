"""API key checks shared by every dialect (each dialect decides where the key comes from)."""

from __future__ import annotations

from fastapi import Request

from diffserve.core.errors import Forbidden, Unauthorized
from diffserve.core.offload import Offload
from diffserve.core.text import is_valid_text
from diffserve.store.keys import ApiKey, KeyStore


def check_key(keys: KeyStore, key_text: str | None) -> ApiKey:
    """The key `key_text` names, read from the key store (blocking: call it off the event loop, alone through
    `authenticate` or as the first step of a handler's one offloaded call); Unauthorized if none."""
    key = keys.verify(_key_text(key_text))
    if key is None:
        raise Unauthorized("Invalid API key")
    return key


async def authenticate(keys: KeyStore, key_text: str | None, offload: Offload) -> ApiKey:
    """The key `key_text` names, verified on `offload` (the app's pool: pass `ds.offload`); Unauthorized if none.
    A request without a key, and a key this process verified lately and heard no revocation of since
    (KeyStore.known), need no thread hop."""
    known = keys.known(_key_text(key_text))
    return known if known is not None else await offload(check_key, keys, key_text)


def _key_text(key_text: str | None) -> str:
    """The key's text as sent, stripped; Unauthorized when there is none or it cannot be any key's."""
    if not key_text or not key_text.strip():
        raise Unauthorized("API key required")
    if not is_valid_text(key_text):  # a lone surrogate cannot be hashed: no key has it
        raise Unauthorized("Invalid API key")
    return key_text.strip()


def require_admin(key: ApiKey) -> None:
    if not key.is_admin:
        raise Forbidden("This endpoint needs an admin API key")


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    auth = request.headers.get("authorization", "").strip()
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None
