"""An API process follows the models and assets other API processes add or delete through the management
API (store/control.py register_model / unregister_model), so every API of a fleet accepts requests for
them. Only the entry is needed here (the weights go to the workers: workers/orders.py)."""

from __future__ import annotations

import logging
from pathlib import Path

from diffserve.core.threads import periodic
from diffserve.engine.models.registrations import register, unregister
from diffserve.engine.models.registry import ModelRegistry
from diffserve.store.control import REGISTER_MODEL, REGISTRATIONS, ControlEvent, ControlLog

log = logging.getLogger(__name__)


class RegistrationFollower:
    def __init__(self, control: ControlLog, registry: ModelRegistry, *, interval_s: float = 1.0) -> None:
        self._control, self._registry = control, registry
        self._seen = 0
        self._rounds = periodic("model-registrations", self.catch_up, interval_s,
                                failure="following model registrations failed; retrying")

    def start(self) -> None:
        self._rounds.start()

    def stop(self) -> None:
        self._rounds.stop()

    def catch_up(self) -> None:
        """Apply what was registered or deleted elsewhere since the last call (the first: what still stands)."""
        if self._seen == 0:
            latest = self._control.latest_id()
            events = self._control.registrations(latest)
        else:
            events = self._control.since(self._seen, REGISTRATIONS)
            latest = events[-1].id if events else self._seen
        for event in events:
            self._apply(event)
        self._seen = latest

    def _apply(self, event: ControlEvent) -> None:
        try:
            if event.kind == REGISTER_MODEL:
                register(self._registry, event.payload, fetch=None, downloads=Path("."))
            else:
                unregister(self._registry, event.payload)
        except Exception:  # noqa: BLE001 - a bad entry is logged; the others still apply
            log.exception("could not apply %s (event %s)", event.kind, event.id)
