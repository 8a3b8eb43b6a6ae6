"""A request's step cache setting (torch-free: the API process parses and checks it).

`"step_cache": "off"`, `{"method": "deepcache", "interval": 3}` (UNet families: the deep features are reused
between full steps, engine/stepcache/deepcache.py) or `{"method": "fbcache", "threshold": 0.1}` (Flux
transformer families: First-Block Cache, engine/stepcache/fbcache.py). A request without one takes its
model's (models.json `step_cache`), else off. Each request's cache lives in its own batch row.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_INTERVAL = 3
DEFAULT_THRESHOLD = 0.1


class StepCache(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["off", "deepcache", "fbcache"] = "off"
    interval: int | None = Field(None, ge=1, le=10, description="deepcache: a full step every `interval` steps")
    threshold: float | None = Field(None, gt=0, le=1, description="fbcache: reuse the cached blocks while the "
                                    "first block's residual changed less than this (relative, mean absolute)")

    @model_validator(mode="before")
    @classmethod
    def _word(cls, value: Any) -> Any:
        if isinstance(value, str):  # "off" / "deepcache" / "fbcache": the method with its defaults
            return {"method": value.strip().lower()}
        return value

    @model_validator(mode="after")
    def _fields_of_method(self) -> StepCache:
        if self.interval is not None and self.method != "deepcache":
            raise ValueError("interval applies to method deepcache only")
        if self.threshold is not None and self.method != "fbcache":
            raise ValueError("threshold applies to method fbcache only")
        if self.method == "deepcache" and self.interval is None:
            return self.model_copy(update={"interval": DEFAULT_INTERVAL})
        if self.method == "fbcache" and self.threshold is None:
            return self.model_copy(update={"threshold": DEFAULT_THRESHOLD})
        return self

    @property
    def on(self) -> bool:
        return self.method != "off" and not (self.method == "deepcache" and self.interval == 1)

    def describe(self) -> dict[str, Any] | str:
        """What a job's meta shows: "off", or the method with its parameter."""
        return self.model_dump(exclude_none=True) if self.on else "off"


OFF = StepCache()
