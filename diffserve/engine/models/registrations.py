"""Models and assets added through the management API, carried to every process of a fleet.

The API process that takes a load_model / load_lora / load_vae writes the entry to its own models file and
posts a `register_model` event (store/control.py); every other process -- workers on other machines, other
API processes -- applies it to its own models file. When the API downloaded the weights, it put them in the
shared storage too (`object`: their key), and a worker fetches them from there into its own models folder,
so it needs no access to the source URL. `unregister_model` removes the entry again (delete_model).
Applying is idempotent: an id already present is kept; an id already gone stays gone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from diffserve.core.errors import DiffserveError
from diffserve.engine.models.registry import ModelRegistry

log = logging.getLogger(__name__)

Fetch = Callable[[str, Path], None]  # (storage key, local file): writes the object there


def register(registry: ModelRegistry, payload: dict[str, Any], *, fetch: Fetch | None, downloads: Path) -> bool:
    """Add the payload's entry unless its id is there. `fetch` None: keep the entry's location as it is (a
    process that never loads the weights: another API process). True if the models file changed."""
    section, entry_id, entry = payload["section"], payload["id"], dict(payload["entry"])
    if any(i == entry_id for i, _ in registry.entries(section)):
        return False
    if payload.get("object") and fetch is not None:
        target = downloads / entry_id / Path(payload["object"]).name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".tmp-{target.name}")
            fetch(payload["object"], partial)
            partial.replace(target)
        entry["location"] = str(target)
    if section == "models":
        registry.add_model(entry_id, entry)
    else:
        registry.add_asset(section, entry_id, entry)
    log.info("registered %s %s (added through the API elsewhere)", section, entry_id)
    return True


def unregister(registry: ModelRegistry, payload: dict[str, Any]) -> bool:
    section, entry_id = payload["section"], payload["id"]
    try:
        if section == "models":
            registry.remove_model(entry_id)
        else:
            registry.remove_asset(section, entry_id)
    except DiffserveError:  # not there (or built in): nothing to remove here
        return False
    log.info("removed %s %s (deleted through the API elsewhere)", section, entry_id)
    return True
