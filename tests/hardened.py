"""The server the hostile-input and schemathesis tests share: production network rules (private,
loopback and metadata addresses refused), default limits, one Qolaba app mapped to the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

from .servers import DiffserveServer

QOLABA_APP = "ap-fGhKl3mfkdlpqrshuwwabc"


def start_hardened_server(data_dir: Path, models_root: Path) -> DiffserveServer:
    env = {"DIFFSERVE_ALLOW_PRIVATE_URLS": "0", "DIFFSERVE_QOLABA_APPS": json.dumps({QOLABA_APP: "tiny-sd"})}
    return DiffserveServer(data_dir, models_root, env_overrides=env).start()
