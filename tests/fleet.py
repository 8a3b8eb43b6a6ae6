"""A fleet on one machine for the tests: real PostgreSQL, Redis and SeaweedFS, API processes with no local
workers (`serve --workers 0`), and `diffserve worker` processes -- each worker, when the test may make network
namespaces (root + iproute2), on a host of its own: a namespace joined to this one by a veth pair on a private
/24 the test owns, reaching the database, the broker and S3 only across that link. A host can be cut off
(`Host.cut`): its link drops every packet, or refuses every TCP connection with a reset (iptables in its
namespace), until `Host.heal`."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import web
from .pgserver import PostgresServer
from .redisserver import RedisServer
from .s3server import ACCESS_KEY, PRIVATE_BUCKET, SECRET_KEY, SeaweedS3
from .servers import DiffserveServer


def free_subnet() -> str:
    """A 10.<x> block no interface here uses (a run killed before its clean-up leaves its links behind):
    10.<x>.<n>.1 here, 10.<x>.<n>.2 in host n's namespace."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
    for _ in range(100):
        block = f"10.{random.randint(100, 250)}"
        if f" {block}." not in used:
            return block
    raise RuntimeError("no free 10.x block for the fleet's hosts")


def can_make_hosts() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def can_cut_hosts() -> bool:
    return can_make_hosts() and shutil.which("iptables") is not None


# how a host is cut off from the others: "drop" (a pulled cable, a black-holing firewall: nothing comes back,
# calls hang until their timeouts) or "refuse" (a host that answers every TCP packet with a reset: connections
# fail at once, "connection refused" / "connection reset by peer")
CUTS = {"drop": ["-j", "DROP"], "refuse": ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]}


@dataclass
class Host:
    """Another machine: a network namespace with one link to this one."""

    index: int
    subnet: str
    name: str = ""

    @property
    def here(self) -> str:  # this machine's address on the link (where the servers listen)
        return f"{self.subnet}.{self.index}.1"

    @property
    def there(self) -> str:
        return f"{self.subnet}.{self.index}.2"

    def create(self) -> "Host":
        self.name = f"dsfleet-{uuid.uuid4().hex[:6]}-{self.index}"
        outer, inner = f"dsf{self.name[-8:-2]}{self.index}h", f"dsf{self.name[-8:-2]}{self.index}n"
        for cmd in (["netns", "add", self.name],
                    ["link", "add", outer, "type", "veth", "peer", "name", inner],
                    ["link", "set", inner, "netns", self.name],
                    ["addr", "add", f"{self.here}/24", "dev", outer],
                    ["link", "set", outer, "up"],
                    ["-n", self.name, "addr", "add", f"{self.there}/24", "dev", inner],
                    ["-n", self.name, "link", "set", inner, "up"],
                    ["-n", self.name, "link", "set", "lo", "up"]):
            subprocess.run(["ip", *cmd], check=True, capture_output=True, timeout=30)
        self._outer, self._inner = outer, inner
        return self

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self, how: str = "drop") -> None:
        """Cut this host off from every other: its link drops or refuses (TCP reset) all traffic, both ways,
        for connections open already and new ones alike. Its processes keep running."""
        for chain, side in (("INPUT", "-i"), ("OUTPUT", "-o")):
            subprocess.run(self.command(["iptables", "-w", "-A", chain, side, self._inner, *CUTS[how]]),
                           check=True, capture_output=True, timeout=30)

    def heal(self) -> None:
        for chain in ("INPUT", "OUTPUT"):
            subprocess.run(self.command(["iptables", "-w", "-F", chain]), check=True, capture_output=True, timeout=30)

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self._outer], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)


@dataclass
class Fleet:
    root: Path
    models_root: Path
    hosts: int = 2  # worker hosts (namespaces); 0: every worker on loopback
    env_overrides: dict[str, str] = field(default_factory=dict)
    models_json: Callable[[Path], str] | None = None  # each process's models.json, given its models root
    pg: PostgresServer | None = None
    redis: RedisServer | None = None
    s3: SeaweedS3 | None = None
    apis: list[DiffserveServer] = field(default_factory=list)
    workers: dict[int, subprocess.Popen] = field(default_factory=dict)
    host_list: list[Host] = field(default_factory=list)

    def start(self, apis: int = 1, workers: int = 2) -> "Fleet":
        subnet = free_subnet() if self.hosts else ""
        self.host_list = [Host(i + 1, subnet).create() for i in range(self.hosts)]
        links = tuple(h.here for h in self.host_list)
        self.pg = PostgresServer(also_listen=links).start()
        self.redis = RedisServer(bind=" ".join(("127.0.0.1", *links))).start()
        self.s3 = SeaweedS3(self.root / "s3", bind="0.0.0.0" if links else "127.0.0.1").start()
        for i in range(apis):
            self.start_api(i)
        for i in range(workers):
            self.start_worker(i)
        self.wait_workers(workers)
        return self

    def common_env(self, address: str = "127.0.0.1") -> dict[str, str]:
        return {
            "DIFFSERVE_DATABASE_URL": self.pg.url_at(address),
            "DIFFSERVE_QUEUE__BACKEND": "celery",
            "DIFFSERVE_QUEUE__BROKER_URL": f"redis://{address}:{self.redis.port}/0",
            "DIFFSERVE_QUEUE__RESEND_INTERVAL_S": "1",
            "DIFFSERVE_STORAGE__BACKEND": "s3",
            "DIFFSERVE_STORAGE__BUCKET": PRIVATE_BUCKET,
            "DIFFSERVE_STORAGE__ENDPOINT_URL": f"http://{address}:{self.s3.port}",
            "DIFFSERVE_STORAGE__REGION": "us-east-1",
            "DIFFSERVE_STORAGE__ACCESS_KEY_ID": ACCESS_KEY,
            "DIFFSERVE_STORAGE__SECRET_ACCESS_KEY": SECRET_KEY,
            "DIFFSERVE_WORKER_STALE_S": "3",
            **self.env_overrides,
        }

    def start_api(self, i: int) -> DiffserveServer:
        data = self.root / f"api-{i}"
        self._write_models(data, self.models_root)
        srv = DiffserveServer(data, self.models_root, env_overrides={**self.common_env(), "DIFFSERVE_WORKERS": "0"})
        if i < len(self.apis):
            self.apis[i] = srv
        else:
            self.apis.append(srv)
        return srv.start(until="/health")

    @property
    def api(self) -> DiffserveServer:
        return self.apis[0]

    def start_worker(self, i: int, *args: str) -> subprocess.Popen:
        host = self.host_list[i % len(self.host_list)] if self.host_list else None
        data = self.root / f"worker-{i}"
        models = data / "models"
        if not models.exists() and self.models_root.is_dir():  # its own copy of the built models
            shutil.copytree(self.models_root, models, symlinks=True)  # (none yet: it builds its own)
        self._write_models(data, models)
        env = {k: v for k, v in self.api.env().items() if not k.startswith("DIFFSERVE_")}
        env.update(self.common_env(host.here if host else "127.0.0.1"))
        env.update({"DIFFSERVE_DATA_DIR": str(data), "DIFFSERVE_MODELS_ROOT": str(models),
                    "DIFFSERVE_ALLOW_PRIVATE_URLS": "1", "DIFFSERVE_TORCH_THREADS": "1",
                    # the tests' fast random model, as tests/servers.py pins it (the shipped default is demo-sd)
                    "DIFFSERVE_DEFAULT_MODEL": "tiny-sd", "DIFFSERVE_PRELOAD_MODELS": '["tiny-sd"]',
                    "DIFFSERVE_REALTIME_MODEL": "tiny-sd", "DIFFSERVE_DTYPE": "fp32"})
        argv = [sys.executable, "-m", "diffserve.cli.main", "worker", "--label", f"host{i}", *args]
        log = open(self.root / f"worker-{i}.log", "ab")
        proc = subprocess.Popen(host.command(argv) if host else argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.workers[i] = proc
        return proc

    def _write_models(self, data: Path, models_root: Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        if self.models_json is not None:
            (data / "models.json").write_text(self.models_json(models_root))

    def redis_llen(self, queue: str = "diffserve") -> int:
        import redis

        return redis.Redis.from_url(self.redis.url).llen(queue)

    def host_of(self, i: int) -> Host:
        """The host worker `i` runs on (workers i and i + hosts share one)."""
        return self.host_list[i % len(self.host_list)]

    def pause_worker(self, i: int, paused: bool = True) -> None:
        """SIGSTOP / SIGCONT: a worker that takes nothing for a moment (past the stale timeout, its jobs would be
        handed on)."""
        os.killpg(self.workers[i].pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def kill_worker(self, i: int) -> None:
        proc = self.workers.pop(i)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def worker_rows(self, admin: str) -> list[dict]:
        return self.api.post("/api/v1/enterprise/system_details", {"key": admin}).json()["workers"]

    def wait_workers(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = web.get(f"{self.api.url}/health", timeout=5).json()
            if health["workers"] >= count:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{count} workers: {health}\n" + "\n".join(
            (self.root / f"worker-{i}.log").read_text()[-2000:] for i in self.workers))

    def stop(self) -> None:
        for i in list(self.workers):
            proc = self.workers.pop(i)
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        for api in self.apis:
            api.stop()
        for server in (self.s3, self.redis, self.pg):
            if server is not None:
                server.stop()
        for host in self.host_list:
            host.delete()
