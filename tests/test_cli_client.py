"""`diffserve generate` and `diffserve jobs` against a running server, as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from .jobs_helpers import LONG, Jobs
from .servers import free_port, png_bytes
from .waiting import wait_until


@pytest.fixture(scope="module")
def key(jobs_server):
    return jobs_server.create_key("--name", "cli")


def cli(server_url: str, key: str | None, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFSERVE_")}
    if key is not None:
        env["DIFFSERVE_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "diffserve.cli.main", *args, "--server", server_url], env=env,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(96, 64))
    return path


def test_generate_writes_the_image(jobs_server, key, photo, tmp_path):
    out = tmp_path / "out.png"
    done = cli(jobs_server.url, key, "generate", str(photo), "--prompt", "a watercolor", "--steps", "8",
               "--seed", "7", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "succeeded (seed 7)" in done.stdout and str(out) in done.stdout
    assert Image.open(out).size == (96, 64)
    listed = cli(jobs_server.url, key, "jobs", "list")
    assert listed.returncode == 0 and "succeeded" in listed.stdout and "a watercolor" in listed.stdout
    job_id = listed.stdout.split()[0]
    shown = cli(jobs_server.url, key, "jobs", "show", job_id)
    assert shown.returncode == 0 and f'"id": {job_id}' in shown.stdout


def test_several_samples_get_numbered_files(jobs_server, key, photo, tmp_path):
    out = tmp_path / "many.png"
    done = cli(jobs_server.url, key, "generate", str(photo), "--prompt", "x", "--steps", "4", "--samples", "2",
               "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "many-0.png").is_file() and (tmp_path / "many-1.png").is_file()


def test_clear_errors_and_exit_codes(jobs_server, key, photo, tmp_path):
    bad_key = cli(jobs_server.url, "ds_not-a-key", "generate", str(photo), "--prompt", "x")
    assert bad_key.returncode == 1 and "server said (401): Invalid API key" in bad_key.stderr
    no_key = cli(jobs_server.url, None, "generate", str(photo), "--prompt", "x")
    assert no_key.returncode == 1 and "set DIFFSERVE_API_KEY" in no_key.stderr
    nowhere = cli(f"http://127.0.0.1:{free_port()}", key, "generate", str(photo), "--prompt", "x")
    assert nowhere.returncode == 1 and "cannot reach the server" in nowhere.stderr
    missing = cli(jobs_server.url, key, "generate", str(tmp_path / "nope.png"), "--prompt", "x")
    assert missing.returncode == 1 and "no such image file" in missing.stderr
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    bad = cli(jobs_server.url, key, "generate", str(junk), "--prompt", "x")
    assert bad.returncode == 1 and "server said (400)" in bad.stderr and "init_image" in bad.stderr
    out_of_range = cli(jobs_server.url, key, "generate", str(photo), "--prompt", "x", "--strength", "2")
    assert out_of_range.returncode == 1 and "strength must be between 0 and 1" in out_of_range.stderr
    assert cli(jobs_server.url, key, "jobs", "show", "999999").returncode == 1


def test_ctrl_c_cancels_the_job_on_the_server(jobs_server, key, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(512, 512))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFSERVE_")}
    env["DIFFSERVE_API_KEY"] = key
    proc = subprocess.Popen([sys.executable, "-m", "diffserve.cli.main", "generate", str(big), "--prompt", "slow",
                             "--steps", "50", "--strength", "1", "--server", jobs_server.url,
                             "-o", str(tmp_path / "never.png")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # a shell's background job starts with SIGINT ignored, and Python keeps it so:
                            # give the CLI the default a user's terminal gives it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    jobs = Jobs(jobs_server, key)
    # the job is the CLI's once it says so: a Ctrl-C before the server's answer reaches it cannot name the job
    queued = proc.stderr.readline()
    assert queued.startswith("job ") and queued.rstrip().endswith(" queued"), queued + proc.communicate()[1]
    job_id = int(queued.split()[1])
    try:
        wait_until(lambda: jobs.get(job_id), 60, every=0.05, accept=lambda job: job["status"] == "running",
                   what="the CLI's job running")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130 and f"job {job_id} cancelled" in err
        assert jobs.done(job_id, timeout=30)["status"] == "cancelled"
    finally:  # a 50-step 512 px job left running would hold this module's worker for minutes
        proc.kill()
        jobs.http.post(f"/v1/jobs/{job_id}/cancel")
    assert not (tmp_path / "never.png").exists()


def test_jobs_cancel(jobs_server, key):
    jobs = Jobs(jobs_server, key)
    job = jobs.submit(**LONG)
    done = cli(jobs_server.url, key, "jobs", "cancel", str(job["id"]))
    assert done.returncode == 0 and f"job {job['id']}:" in done.stdout
    assert jobs.done(job["id"], timeout=30)["status"] == "cancelled"
