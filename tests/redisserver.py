"""A real Redis server for the tests (the fleet's Celery broker): Debian's redis-server on a free loopback
port, no persistence (so a restart loses every message, the worst case for "no job is lost"), stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .servers import free_port


class RedisServer:
    def __init__(self, bind: str = "127.0.0.1") -> None:  # bind: addresses separated by spaces
        self.root = Path(tempfile.mkdtemp(prefix="diffserve-redis-"))
        self.bind = bind
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is missing: scripts/system-deps.sh installs Debian's redis-server")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", *self.bind.split(), "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    @property
    def address(self) -> str:
        return self.bind.split()[0]

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def restart(self) -> None:
        """Kill and start again on the same port: every message in it is gone."""
        self.kill()
        self.start()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
