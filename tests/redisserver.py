"""A real Redis server for the tests (the fleet's Celery broker): Debian's redis-server on a free loopback
port, no persistence (so a restart loses every message, the worst case for "no job is lost"), stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from .servers import free_port
from .waiting import wait_until


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

        def ping() -> bytes:
            with socket.create_connection((self.address, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16)

        wait_until(ping, 20, every=0.05, accept=lambda answer: answer.startswith(b"+PONG"), ignore=OSError,
                   what=f"redis-server on {self.address}:{self.port} to answer PING")
        return self

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
