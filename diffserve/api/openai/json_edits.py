"""POST /v1/images/edits with a JSON body, as OpenAI's spec types it (`EditImageBodyJsonParam`).

- `images`: a list of 1-16 references `{"image_url": ...}`; the first is the image to edit, the rest are
  references (as the multipart `image[]` files). `image_url` is an http(s) URL, fetched by the service under
  the network policy on a fetch slot (media/fetch.py: no private addresses, bounded size and time), or a
  `data:image/...;base64,` URL.
- `mask`: one such reference, OpenAI's alpha mask (alpha 0 = repaint), turned into diffserve's mask here.
- `file_id` (a reference into OpenAI's Files API, which diffserve does not have): a 400 naming it.
- The other fields are read as the multipart form's are (protocol.Params, typed as JSON types them); no
  `response_format` in this body in the spec: the answer is b64_json unless one is sent.
"""

from __future__ import annotations

from typing import Any


from diffserve.api.openai.protocol import mask_from_alpha
from diffserve.api.state import AppState
from diffserve.core.errors import InvalidInput
from diffserve.media.fetch import fetch_image_bytes
from diffserve.media.inputs import decode_base64
from diffserve.store.keys import ApiKey

MAX_IMAGES = 16


def image_urls(fields: dict[str, Any]) -> list[str]:
    """The `images` list's URLs, checked before anything is fetched."""
    images = fields.get("images")
    if images is None:
        raise InvalidInput("images is required: a list of {\"image_url\": ...} (an http(s) URL or a data URL)",
                           field="images")
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_IMAGES:
        raise InvalidInput(f"images must be a list of 1 to {MAX_IMAGES} image references", field="images")
    return [reference_url(ref, f"images[{i}]") for i, ref in enumerate(images)]


def reference_url(ref: Any, name: str) -> str:
    """An ImageRefParam's image_url; file_id refused (no Files API), anything else named in the error."""
    if not isinstance(ref, dict):
        raise InvalidInput(f"{name} must be an object with an image_url", field=name)
    if "file_id" in ref:
        raise InvalidInput(f"{name}.file_id is not supported: diffserve has no Files API; send image_url (an "
                           "http(s) URL or a data URL) instead", field=f"{name}.file_id")
    unknown = sorted(str(k)[:40] for k in ref if k != "image_url")
    if unknown:
        raise InvalidInput(f"{name} has unknown fields: {', '.join(unknown[:5])} (only image_url)", field=name)
    url = ref.get("image_url")
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput(f"{name}.image_url is required: an http(s) URL or a data URL", field=f"{name}.image_url")
    url = url.strip()
    if url[:5].lower() != "data:" and url.split("://", 1)[0].lower() not in ("http", "https"):
        raise InvalidInput(f"{name}.image_url must be an http(s) URL or a data:image/...;base64 URL",
                           field=f"{name}.image_url")
    return url


async def mask_png(ds: AppState, key: ApiKey, ref: Any) -> str:
    """The JSON body's mask (alpha 0 = repaint) as diffserve's white-is-repaint PNG, base64. A URL is fetched
    on the key's fetch slot under the network policy; decoding runs off the event loop."""
    url, field, images = reference_url(ref, "mask"), "mask.image_url", ds.settings.images
    if url[:5].lower() == "data:":
        data = await ds.offload(lambda: decode_base64(url, field=field, limits=images))
    else:
        data = await ds.service.fetches.run(key.key_id, lambda: fetch_image_bytes(
            url, field=field, limits=images, allow_private=ds.settings.allow_private_urls, client=ds.service.http))
    return await ds.offload(mask_from_alpha, data, images)
