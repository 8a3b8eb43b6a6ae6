"""`make fleet-demo`: the fleet on this machine's loopback -- real PostgreSQL, Redis and SeaweedFS (Debian's
postgresql and redis-server from scripts/system-deps.sh, SeaweedFS's `weed` from the test lock), one API
process with no workers of its own and two `diffserve worker` processes -- then how to send a request.
Ctrl-C stops everything. The same parts the fleet tests use (tests/fleet.py), on loopback only."""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fleet import Fleet  # noqa: E402


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="diffserve-fleet-demo-"))
    fleet = Fleet(root, root / "models", hosts=0)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"starting PostgreSQL, Redis, SeaweedFS, an API and two workers under {root} ...", flush=True)
    try:
        fleet.start(apis=1, workers=2)
        key = fleet.api.create_key("--name", "fleet-demo")
        admin = fleet.api.create_key("--admin", "--name", "fleet-demo-admin")
        env = fleet.common_env()
        print(f"""
The fleet is up: API {fleet.api.url} (workers 0), two `diffserve worker` processes (labels host0, host1).
  store   {env["DIFFSERVE_DATABASE_URL"]}
  broker  {env["DIFFSERVE_QUEUE__BROKER_URL"]}
  S3      {env["DIFFSERVE_STORAGE__ENDPOINT_URL"]} (bucket {env["DIFFSERVE_STORAGE__BUCKET"]})
  logs    {root}/api-0/server-*.log, {root}/worker-*.log

Send a request (ModelsLab v6; the answer's output URL is a presigned S3 link):
  .venv/bin/python -c "import base64,io;from PIL import Image;b=io.BytesIO();Image.new('RGB',(128,128),(200,80,40)).save(b,'PNG');print(base64.b64encode(b.getvalue()).decode())" > /tmp/in.b64
  curl -s {fleet.api.url}/api/v6/images/img2img -H 'Content-Type: application/json' \\
    -d '{{"key":"{key}","prompt":"a harbour","init_image":"'$(cat /tmp/in.b64)'","num_inference_steps":"4","base64":"no"}}'

Every worker, its machine, label, models and state:
  curl -s {fleet.api.url}/api/v1/enterprise/system_details -H 'Content-Type: application/json' -d '{{"key":"{admin}"}}'

Ctrl-C stops the fleet.""", flush=True)
        stop.wait()
    finally:
        print("stopping ...", flush=True)
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
