"""Every ModelsLab path prefix and fetch path, defined once (the route table, the renderer and the webhook
bodies name them from here)."""

from __future__ import annotations

V6 = "/api/v6"
V6_IMAGES = f"{V6}/images"
V6_REALTIME = f"{V6}/realtime"
V7_IMAGES = "/api/v7/images"
ENTERPRISE = "/api/v1/enterprise"
ENTERPRISE_IMAGES = f"{ENTERPRISE}/images"
ENTERPRISE_REALTIME = f"{ENTERPRISE}/realtime"
ENTERPRISE_PONY = f"{ENTERPRISE}/pony"


def fetch_of(prefix: str) -> str:
    """The fetch path of a family of pages: `<prefix>/fetch` (answers' `fetch_result` add `/<id>`)."""
    return f"{prefix}/fetch"


V6_FETCH = fetch_of(V6_IMAGES)
V6_REALTIME_FETCH = fetch_of(V6_REALTIME)
V7_FETCH = fetch_of(V7_IMAGES)
ENTERPRISE_FETCH = fetch_of(ENTERPRISE)  # any enterprise job of the key (pony, realtime, images)
ENTERPRISE_IMAGES_FETCH = fetch_of(ENTERPRISE_IMAGES)
ENTERPRISE_REALTIME_FETCH = fetch_of(ENTERPRISE_REALTIME)
ENTERPRISE_PONY_FETCH = fetch_of(ENTERPRISE_PONY)
