"""Loaded pipelines, kept per model id; least recently used ones are dropped past the budget."""

from __future__ import annotations

import gc
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

P = TypeVar("P")


class PipelineCache(Generic[P]):
    def __init__(self, load: Callable[[str], P], max_models: int = 2) -> None:
        self._load = load
        self._max = max(1, max_models)
        self._pipes: OrderedDict[str, P] = OrderedDict()
        self.loads = 0  # how many times a model was loaded (a test counts this)

    def get(self, model_id: str) -> P:
        if model_id in self._pipes:
            self._pipes.move_to_end(model_id)
            return self._pipes[model_id]
        while len(self._pipes) >= self._max:
            self._pipes.popitem(last=False)
            gc.collect()
        pipe = self._load(model_id)
        self.loads += 1
        self._pipes[model_id] = pipe
        return pipe

    def loaded(self) -> list[str]:
        return list(self._pipes)

    def clear(self) -> None:
        self._pipes.clear()
        gc.collect()
