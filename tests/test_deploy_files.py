"""The deployment files beside the Dockerfile: compose.yaml, the systemd unit (deploy/).

The image itself is built and run in tests/test_container.py (`make test-container`). Here, in the main suite:
every DIFFSERVE_* variable compose.yaml sets names a real setting and builds a valid Settings (pydantic-settings
ignores an unknown variable silently, so a typo would go unnoticed), the fleet's parts are there, and, where the
tools exist on the machine, `docker compose config` (or Debian's docker-compose, which `make test-container`
installs and runs this file with) and `systemd-analyze verify` accept the files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from diffserve.config import SHORT_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent
INTERPOLATION = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with no VAR set: the defaults a plain `docker compose up` uses."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def service_env(service: dict) -> dict[str, str]:
    return {name: interpolate(value) for name, value in (service.get("environment") or {}).items()}


def unknown_settings(env: dict[str, str]) -> list[str]:
    """DIFFSERVE_* names that match no Settings field (nested ones through '__')."""
    unknown = []
    for name in env:
        if not name.startswith("DIFFSERVE_") or name.removeprefix("DIFFSERVE_").lower() in SHORT_NAMES:
            continue  # a short name (DIFFSERVE_PUBLIC_URL) is read into its group's field
        model: type[BaseModel] = Settings
        for part in name.removeprefix("DIFFSERVE_").lower().split("__"):
            field = model.model_fields.get(part)
            if field is None:
                unknown.append(name)
                break
            model = field.annotation if isinstance(field.annotation, type) else None
            if model is None or not issubclass(model, BaseModel):
                model = BaseModel
    return unknown


def test_every_service_sets_real_settings(monkeypatch):
    services = compose()["services"]
    for name in ("api", "worker", "migrate", "worker-gpu"):
        env = service_env(services[name])
        assert not unknown_settings(env), (name, unknown_settings(env))
        for var in [v for v in os.environ if v.startswith("DIFFSERVE_")]:
            monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        settings = Settings()
        assert settings.queue.backend == "celery", name
        assert settings.storage.backend == "s3" and settings.storage.bucket, name
        assert settings.db_url.startswith("postgresql+psycopg://"), name
        assert "redis://redis:" in settings.queue.broker_url


def test_the_fleet_is_complete():
    services = compose()["services"]
    assert {"postgres", "redis", "s3", "migrate", "api", "worker", "worker-gpu"} <= set(services)
    assert services["migrate"]["command"] == ["db", "upgrade"]
    for name in ("api", "worker", "worker-gpu"):  # nothing serves before the schema is there
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["api"]["command"][:3] == ["serve", "--workers", "0"]
    assert services["worker"]["command"][0] == "worker"
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]  # an option: `docker compose --profile gpu up`
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "cu" in interpolate(gpu["build"]["args"]["TORCH"])
    assert service_env(gpu)["DIFFSERVE_DEVICE"] == "cuda"


def test_seaweedfs_identity_matches_the_default_keys():
    env = service_env(compose()["services"]["api"])
    identities = json.loads((ROOT / "deploy/seaweedfs-s3.json").read_text())["identities"]
    creds = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    assert (env["DIFFSERVE_STORAGE__ACCESS_KEY_ID"], env["DIFFSERVE_STORAGE__SECRET_ACCESS_KEY"]) in creds


def compose_command() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    return None


@pytest.mark.skipif(compose_command() is None, reason="neither `docker compose` nor docker-compose here "
                                                      "(system-deps.sh --container); the structure is checked above")
def test_docker_compose_accepts_the_file():
    for profile in ([], ["--profile", "gpu"]):
        out = subprocess.run([*compose_command(), "-f", str(ROOT / "compose.yaml"), *profile, "config", "-q"],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit():
    out = subprocess.run(["systemd-analyze", "verify", str(ROOT / "deploy/diffserve.service")],
                         capture_output=True, text=True)
    # the one complaint allowed: the checkout it runs from (/opt/diffserve) is not installed on this machine
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if line.strip() and "/opt/diffserve/.venv/bin/diffserve" not in line]
    assert not problems, problems


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (not in system-deps.sh: Debian's "
                                                          "package starts a server on port 80)")
def test_nginx_accepts_the_proxy_config(tmp_path):
    """deploy/nginx.conf inside an http block, with a throwaway certificate in place of the real one."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=img.example.com", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    site = (ROOT / "deploy/nginx.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/img.example.com/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/letsencrypt/live/img.example.com/privkey.pem", str(tmp_path / "key.pem"))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
                                         f"events {{}}\nhttp {{ access_log off; include {tmp_path}/site.conf; }}\n")
    out = subprocess.run(["nginx", "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "proxy_buffering off" in site.split("/v1/jobs/[^/]+/events")[1]  # the event stream routes
