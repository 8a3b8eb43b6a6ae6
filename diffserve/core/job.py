"""The job: what the store holds for every request, and its status life cycle."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from diffserve.core.request import GenerationRequest


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class Job:
    id: int
    key_id: str
    dialect: str
    status: JobStatus
    request: GenerationRequest
    output_token: str
    dialect_params: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # storage keys, one per image
    storage_version: int | None = None  # the storage settings `outputs` were written under (storage/configured.py)
    nsfw: list[bool] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    worker_id: str | None = None
    webhook_status: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def output_keys(self) -> list[str]:
        """The job's image keys: once it succeeded, the ones it points at (its winning attempt's); before, its
        link keys (`future_links`), which hold whichever attempt wins."""
        if self.outputs:
            return list(self.outputs)
        return self.link_keys()

    def link_keys(self) -> list[str]:
        """Names for the job's images that hold whichever attempt wins: early links (ModelsLab's `future_links`)
        name these, and the API resolves each through the job to its winning attempt's image once the job
        succeeded (api/outputs.py), never a running or handed-on attempt's. They are spelled as the first
        attempt's keys, so in the usual case (the first attempt wins) an early link is the final link."""
        return [output_key(self.output_token, i, temp=self.request.temp) for i in range(self.request.samples)]

    def attempt_keys(self, attempt: int) -> list[str]:
        """The keys one attempt writes its images to. Each attempt has its own, so an attempt that finishes
        late (its job handed on meanwhile) never overwrites the images of the attempt the job points at."""
        return [output_key(self.output_token, i, temp=self.request.temp, attempt=attempt)
                for i in range(self.request.samples)]

    @property
    def generation_time(self) -> float | None:
        if self.started_at and self.finished_at:
            return round((self.finished_at - self.started_at).total_seconds(), 3)
        return None


#: Keys under this prefix are deleted once older than `storage.temp_ttl_s` (requests with `temp: yes`).
TEMP_PREFIX = "temp/"


def output_key(token: str, index: int, *, temp: bool = False, attempt: int = 1) -> str:
    """`generations/<token>-<index>.png` for the first attempt, `<token>-a<attempt>-<index>.png` for later ones."""
    run = f"-a{attempt}" if attempt > 1 else ""
    return f"{TEMP_PREFIX if temp else ''}generations/{token}{run}-{index}.png"


def input_key(token: str, name: str = "init", *, temp: bool = False) -> str:
    """Inputs are stored beside the job, never served: `inputs/<token>-init.png`, `-ref0`, `-ip`..."""
    return f"{TEMP_PREFIX if temp else ''}inputs/{token}-{name}.png"
