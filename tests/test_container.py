"""The container image, built and run for real (`make test-container`; kept out of `make test` for its minutes).

A dockerd of the test's own (tests/dockerd.py) builds the repository's Dockerfile from a Debian 12 base made
with mmdebstrap -- the same Dockerfile a user builds from the public python image, with the base as a build
argument -- then runs the container and the README's worked example in it: a key made with `docker exec ...
diffserve keys create`, the ModelsLab v6 img2img request with docs/images/demo-input.jpg on demo-sd, and the
output URL fetched. Everything docker writes lives under the test's temp dir and is removed at the end.
Skipped only when docker.io / mmdebstrap are not installed (scripts/system-deps.sh --container installs them).
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.dockerd import Dockerd, WheelServer, build_base_image, missing_tools
from tests.servers import free_port
from tests.waiting import wait_until
from tests import web

ROOT = Path(__file__).resolve().parent.parent
BASE_TAG = "diffserve-base:test"
IMAGE_TAG = "diffserve:test"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

pytestmark = [
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} "
                                                     "(scripts/system-deps.sh --container)"),
    pytest.mark.timeout(2400),
]


def torch_pin() -> str:
    """The Makefile's TORCH= default (torch==<version>): the image gets the same torch as `make install`."""
    match = re.search(r"^TORCH\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, "TORCH ?= ... not found in the Makefile"
    return match.group(1)


def local_torch_folder(pin: str) -> Path | None:
    """A find-links folder of pip's configuration holding that torch for the base's Python 3.11, if any."""
    version = pin.split("==")[1]
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "find-links" in line:
            for folder in line.split("=", 1)[1].strip("'\" ").split():
                if list(Path(folder).glob(f"torch-{version}*-cp311-cp311-manylinux*_x86_64.whl")):
                    return Path(folder)
    return None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Dockerd(tmp_path_factory.mktemp("docker")).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def image(daemon, tmp_path_factory):
    """Base image from Debian's packages, then `docker build` of the repository with it as BASE."""
    started = time.monotonic()
    build_base_image(daemon, BASE_TAG, tmp_path_factory.mktemp("base"))
    base_s = time.monotonic() - started
    args = ["build", "-t", IMAGE_TAG, "--progress=plain", "--build-arg", f"BASE={BASE_TAG}"]
    if CA_BUNDLE.exists():  # a TLS-intercepting proxy's root is in this bundle: pip in the build trusts it
        args += ["--secret", f"id=ca,src={CA_BUNDLE}"]
    pin = torch_pin()
    folder = local_torch_folder(pin)
    server = None
    if folder:  # the CPU wheel on this machine's disk, served on the bridge (as the Makefile takes it from there)
        server = WheelServer(folder, daemon.bridge_address())
        host = daemon.bridge_address()
        args += ["--build-arg", f"TORCH={pin} --no-index --find-links {server.url} --trusted-host {host}"]
    started = time.monotonic()
    try:
        daemon.docker(*args, str(ROOT), timeout=1800)  # fails unless every step, check_venv.py included, passed
    finally:
        if server:
            server.stop()
    build_s = time.monotonic() - started
    size = int(daemon.docker("image", "inspect", "-f", "{{.Size}}", IMAGE_TAG).stdout.strip())
    print(f"\ncontainer: base image (mmdebstrap + import) {base_s:.0f} s, docker build {build_s:.0f} s, "
          f"image {size / 1e6:.0f} MB (base {BASE_TAG})")
    return IMAGE_TAG


@pytest.fixture(scope="module")
def container(daemon, image):
    port = free_port()
    started = time.monotonic()
    daemon.docker("run", "-d", "--name", "diffserve-test", "-p", f"127.0.0.1:{port}:8000", image)
    url = f"http://127.0.0.1:{port}"
    try:
        health = wait_for_health(daemon, url, timeout=300)
        print(f"container: /health answered {health} {time.monotonic() - started:.1f} s after `docker run`")
        yield url
    finally:
        logs = daemon.docker("logs", "diffserve-test", check=False)  # on failure, this says why
        print("container log (stderr tail):\n" + logs.stderr[-2000:])
        daemon.docker("rm", "-f", "diffserve-test", check=False)


def wait_for_health(daemon: Dockerd, url: str, timeout: float) -> dict:
    def health() -> dict | None:
        try:
            r = web.get(f"{url}/health", timeout=5)
            if r.status_code == 200 and r.json()["status"] == "ok":
                return r.json()
        except httpx.HTTPError:
            pass
        state = daemon.docker("inspect", "-f", "{{.State.Status}}", "diffserve-test").stdout.strip()
        assert state == "running", f"the container is {state}"
        return None

    return wait_until(health, timeout, every=1, what=f"{url}/health to answer ok")


def test_worked_example_in_the_container(daemon, container):
    """The README's worked example against the container: a key from `docker exec`, the v6 request, the PNG."""
    made = daemon.docker("exec", "diffserve-test", "diffserve", "keys", "create", "--name", "me")
    key = made.stdout.strip().splitlines()[-1]
    photo = base64.b64encode((ROOT / "docs/images/demo-input.jpg").read_bytes()).decode()
    body = {"key": key, "model_id": "demo-sd", "prompt": "sketch", "negative_prompt": None, "init_image": photo,
            "samples": "1", "num_inference_steps": "8", "guidance_scale": 7.5, "strength": 0.3,
            "use_karras_sigmas": "no", "seed": 0}
    started = time.monotonic()
    r = web.post(f"{container}/api/v6/images/img2img", json=body, timeout=300)
    print(f"container: the worked example's request answered in {time.monotonic() - started:.1f} s")
    answer = r.json()
    assert r.status_code == 200 and answer["status"] == "success", answer
    output = answer["output"][0]
    assert output.startswith(f"{container}/"), output  # the URL a client of the published port can fetch
    image = web.get(output, timeout=60)
    assert image.status_code == 200
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n" or image.content[:3] == b"\xff\xd8\xff"
    decoded = Image.open(io.BytesIO(image.content))
    assert decoded.size == (answer["meta"]["W"], answer["meta"]["H"])


def test_runs_as_non_root_with_data_on_a_volume(daemon, container):
    assert daemon.docker("exec", "diffserve-test", "id", "-u").stdout.strip() == "10001"
    mounts = json.loads(daemon.docker("inspect", "-f", "{{json .Mounts}}", "diffserve-test").stdout)
    assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/data")]
    listing = daemon.docker("exec", "diffserve-test", "ls", "/data").stdout.split()
    assert any(name.endswith(".db") or name.endswith(".sqlite") for name in listing), listing


def test_healthcheck_reports_healthy(daemon, container):
    """Docker's own HEALTHCHECK (the Dockerfile's /health probe) turns the container healthy."""
    def health() -> str:
        status = daemon.docker("inspect", "-f", "{{.State.Health.Status}}", "diffserve-test").stdout.strip()
        assert status in ("starting", "healthy"), status
        return status

    status = wait_until(health, 120, every=2, accept=lambda s: s == "healthy", what="Docker's health status healthy")
    assert status == "healthy"


def test_stops_cleanly_on_sigterm(daemon, container):
    """`docker stop` (SIGTERM) ends the server within its grace time, with exit status 0."""
    started = time.monotonic()
    daemon.docker("stop", "-t", "30", "diffserve-test")
    took = time.monotonic() - started
    code = daemon.docker("inspect", "-f", "{{.State.ExitCode}}", "diffserve-test").stdout.strip()
    print(f"container: docker stop took {took:.1f} s, exit status {code}")
    assert took < 30 and code == "0"
