"""The server the hostile-input and schemathesis tests share: production network rules (private,
loopback and metadata addresses refused), default limits, one Qolaba app mapped to the tiny model and
one (Kontext) to a model that takes reference images (file_urls), following the input image's size."""

from __future__ import annotations

import json
from pathlib import Path

from .servers import DiffserveServer

QOLABA_APP = "ap-fGhKl3mfkdlpqrshuwwabc"
QOLABA_REFS_APP = "ap-tK7gR4jP9sWbC1mNfE8uVzH2"


def start_hardened_server(data_dir: Path, models_root: Path) -> DiffserveServer:
    env = {"DIFFSERVE_ALLOW_PRIVATE_URLS": "0", "DIFFSERVE_QOLABA_APPS": json.dumps({
        QOLABA_APP: "tiny-sd", QOLABA_REFS_APP: {"model": "tiny-flux-kontext", "sizes": []}})}
    return DiffserveServer(data_dir, models_root, env_overrides=env).start()
