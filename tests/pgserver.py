"""A real PostgreSQL server for the tests: Debian's binaries, initdb into a temp dir, pg_ctl on a free port
(loopback only), stopped after. As root it runs as the `postgres` user (initdb refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .servers import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is missing: scripts/system-deps.sh installs Debian's postgresql")
    return found[-1]


class PostgresServer:
    """`also_listen`: more addresses to accept connections on (the fleet test's network namespaces), each
    trusted for its /24."""

    def __init__(self, also_listen: tuple[str, ...] = ()) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="diffserve-pg-"))
        self.port = free_port()
        self.user = "diffserve"
        self.listen = ",".join(("127.0.0.1", *also_listen))
        self.also_listen = also_listen

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> "PostgresServer":
        os.chmod(self.root, 0o755)
        data = self.root / "data"
        data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(data, "postgres")
        self._run(_bin("initdb"), "-D", str(data), "-A", "trust", "-U", self.user, "-E", "UTF8")
        with open(data / "pg_hba.conf", "a") as hba:
            for address in self.also_listen:
                hba.write(f"host all all {address.rsplit('.', 1)[0]}.0/24 trust\n")
        self.resume()
        return self

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def pause(self) -> None:
        """Stop the server, keeping its data (a database outage)."""
        self._run(_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-w", "-o",
                  f"-p {self.port} -c listen_addresses='{self.listen}' -k {self.root}", "start")

    def url_at(self, address: str) -> str:
        return self.url.replace("@127.0.0.1:", f"@{address}:")

    def stop(self) -> None:
        try:
            self._run(_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
