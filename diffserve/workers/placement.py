"""Which GPU-class labels (Qolaba `inference_type`) each local worker carries. Torch-free: the API reads it."""

from __future__ import annotations

from diffserve.config import Settings


def worker_labels(settings: Settings, worker_id: str) -> tuple[str, ...]:
    """`DIFFSERVE_WORKER_LABELS=a10g,h100` labels worker-0 a10g and worker-1 h100; a single value labels
    every worker; workers past the end of the list have no label."""
    labels = [part.strip().lower() for part in settings.worker_labels.split(",") if part.strip()]
    if not labels:
        return ()
    if len(labels) == 1:
        return (labels[0],)
    index = worker_index(worker_id)
    return (labels[index],) if index is not None and index < len(labels) else ()


def configured_labels(settings: Settings) -> set[str]:
    """Every label a local worker of this server carries."""
    return {label for i in range(settings.workers) for label in worker_labels(settings, f"worker-{i}")}


def worker_index(worker_id: str) -> int | None:
    prefix, _, number = worker_id.rpartition("-")
    return int(number) if prefix and number.isdigit() else None
