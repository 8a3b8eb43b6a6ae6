"""Where each local worker runs: its torch device (one worker per GPU with --gpus) and the GPU-class labels
(Qolaba `inference_type`) it carries. Torch-free: the API process reads it to start and describe workers.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from diffserve.config import Settings


def visible_gpus() -> list[int]:
    """Indices of the CUDA devices a worker can see, without importing torch: CUDA_VISIBLE_DEVICES when set
    (its entries renumber from 0, as CUDA does), else the NVIDIA driver's /proc/driver/nvidia/gpus."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return list(range(len([part for part in visible.split(",") if part.strip() and part.strip() != "-1"])))
    gpus = Path("/proc/driver/nvidia/gpus")
    return list(range(len(list(gpus.iterdir())))) if gpus.is_dir() else []


def gpu_indices(settings: Settings) -> list[int] | None:
    """The GPUs of `--gpus` ('all' or '0,2'), None when the setting is not used."""
    if settings.worker.gpus is None:
        return None
    if settings.worker.gpus.strip().lower() == "all":
        found = visible_gpus()
        if not found:
            raise ValueError("--gpus all: no CUDA device is visible (CUDA_VISIBLE_DEVICES, /proc/driver/nvidia)")
        return found
    try:
        indices = [int(part) for part in settings.worker.gpus.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus must be 'all' or GPU indices like 0,1; got {settings.worker.gpus!r}") from None
    if not indices or min(indices) < 0:
        raise ValueError(f"--gpus must be 'all' or GPU indices like 0,1; got {settings.worker.gpus!r}")
    return indices


def worker_count(settings: Settings) -> int:
    """--gpus starts one worker per GPU; otherwise --workers."""
    gpus = gpu_indices(settings)
    return len(gpus) if gpus is not None else settings.worker.count


def worker_device(settings: Settings, worker_id: str) -> str:
    """worker-i runs on cuda:<i-th GPU of --gpus>; without --gpus every worker uses DIFFSERVE_DEVICE, where a
    bare `cuda` with several workers spreads them over the visible GPUs (worker-i on cuda:i mod count)."""
    gpus = gpu_indices(settings)
    index = worker_index(worker_id) or 0
    if gpus is not None:
        return f"cuda:{gpus[index % len(gpus)]}"
    count = len(visible_gpus()) if settings.engine.device == "cuda" and settings.worker.count > 1 else 0
    if count > 1:
        return f"cuda:{index % count}"
    return settings.engine.device


def worker_labels(settings: Settings, worker_id: str) -> tuple[str, ...]:
    """`DIFFSERVE_WORKER_LABELS=a10g,h100` labels worker-0 a10g and worker-1 h100; a single value labels
    every worker; workers past the end of the list have no label."""
    labels = [part.strip().lower() for part in settings.worker.labels.split(",") if part.strip()]
    if not labels:
        return ()
    if len(labels) == 1:
        return (labels[0],)
    index = worker_index(worker_id)
    return (labels[index],) if index is not None and index < len(labels) else ()


def configured_labels(settings: Settings) -> set[str]:
    """Every label a local worker of this server carries."""
    return {label for i in range(worker_count(settings)) for label in worker_labels(settings, f"worker-{i}")}


def local_worker_id(settings: Settings, index: int) -> str:
    """worker-<i> on one machine. In a fleet (the celery queue) several API processes may run local workers on one
    store: <host>-api<pid>-worker-<i> keeps them apart, so an API's start-up never takes another's workers for its
    own dead ones (they are then judged by their heartbeat, like `diffserve worker`)."""
    if settings.queue.backend == "celery":
        return f"{socket.gethostname()}-api{os.getpid()}-worker-{index}"
    return f"worker-{index}"


def worker_index(worker_id: str) -> int | None:
    prefix, _, number = worker_id.rpartition("-")
    return int(number) if prefix and number.isdigit() else None
