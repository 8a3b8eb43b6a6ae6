"""A Docker daemon of the test's own (Debian's docker.io: dockerd on its own socket, data and exec dirs under a
temp dir) and a Debian 12 base image made with mmdebstrap, for tests/test_container.py.

No image registry need be reachable: the base image is built from Debian's packages and imported. BuildKit
comes with dockerd 20.10+ itself; the client is Debian's /usr/bin/docker, whose classic `docker build` talks to
it with DOCKER_BUILDKIT=1 (a newer client without the buildx plugin refuses BuildKit).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .waiting import wait_until

DOCKERD = "/usr/sbin/dockerd"
CLIENT = "/usr/bin/docker"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"


def missing_tools() -> list[str]:
    """What the container test cannot run without (scripts/system-deps.sh --container installs it)."""
    missing = [p for p in (DOCKERD, CLIENT) if not os.access(p, os.X_OK)]
    if not shutil.which("mmdebstrap"):
        missing.append("mmdebstrap")
    if os.geteuid() != 0:
        missing.append("root (dockerd and mmdebstrap run as root)")
    return missing


@dataclass
class Dockerd:
    root: Path
    proc: subprocess.Popen | None = None
    made_bridge: bool = False
    env: dict[str, str] = field(default_factory=dict)

    @property
    def sock(self) -> Path:
        return self.root / "docker.sock"

    def start(self, timeout: float = 120) -> "Dockerd":
        self.root.mkdir(parents=True, exist_ok=True)
        self.made_bridge = not Path("/sys/class/net/docker0").exists()
        log = open(self.root / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            [DOCKERD, f"--host=unix://{self.sock}", f"--data-root={self.root / 'data'}",
             f"--exec-root={self.root / 'exec'}", f"--pidfile={self.root / 'dockerd.pid'}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_BUILDKIT": "1",
                    "DOCKER_CONFIG": str(self.root / "client")}

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited:\n{self.log_tail()}")
            return self.sock.exists() and self.docker("info", check=False, timeout=30).returncode == 0

        wait_until(up, timeout, every=0.5, what="dockerd to answer `docker info`", context=self.log_tail)
        return self

    def docker(self, *args: str, check: bool = True, timeout: float = 600,
               **kwargs) -> subprocess.CompletedProcess:
        out = subprocess.run([CLIENT, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                             **kwargs)
        if check and out.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)[:300]} -> {out.returncode}\n{out.stdout[-4000:]}"
                               f"\n{out.stderr[-4000:]}")
        return out

    def bridge_address(self) -> str:
        """The host's address on the daemon's bridge: build steps and containers reach the host there."""
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True,
                             check=True).stdout.split()
        return out[out.index("inet") + 1].split("/")[0]

    def log_tail(self) -> str:
        path = self.root / "dockerd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (dockerd stops its containers and its containerd, unmounts its layers), then the temp dirs."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.made_bridge:
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True)
        shutil.rmtree(self.root / "data", ignore_errors=True)
        shutil.rmtree(self.root / "exec", ignore_errors=True)


def build_base_image(daemon: Dockerd, tag: str, workdir: Path, timeout: float = 900) -> None:
    """Debian 12 (minbase) with Debian's python3 + venv and CA certificates, imported as `tag`."""
    tarball = workdir / "base.tar"
    subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={BASE_PACKAGES}", "--format=tar",
                    "bookworm", str(tarball), MIRROR], check=True, timeout=timeout, capture_output=True)
    daemon.docker("import", str(tarball), tag, timeout=300)
    tarball.unlink()


class WheelServer:
    """Serves one folder of wheels over HTTP on the bridge address (pip's --find-links inside a build step)."""

    def __init__(self, folder: Path, host: str) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer((host, 0), handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: D102 - the build log has pip's own account
        pass
