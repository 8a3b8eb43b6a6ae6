"""Benches cannot rot: each bench under bench/ runs its `--quick` mode (the same code path at its smallest size)
as a subprocess, exits 0 and prints the figures it is meant to print (its table header and a number per row)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NUM = r"-?\d+(?:\.\d+)?"  # a figure as the benches print them

# bench, extra arguments, patterns its output must hold (each a line, re.MULTILINE)
BENCHES = {
    "latency": ([], [
        rf"^time to /health 200 \(the API answers\): {NUM} s$",
        rf"^time to /ready 200 .*: {NUM} s$",
        r"^64x64, 4 steps x strength 0\.7, 1 torch thread, median of 2:$",
        *(rf"^  {row}\s+{NUM} ms" for row in ("bare pipeline call", "job run time in the worker",
                                               "end to end over HTTP", "serving overhead")),
        rf"^  without\s+{NUM} ms\s+with\s+{NUM} ms\s+extra [+-]{NUM} ms \([+-]{NUM}% of the job\)$",
        r"^fetch under load: ModelsLab v6 fetch at 160 req/s for 1 s per kind and round, worker busy",
        *(rf"^  this tree\s+{kind}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}$" for kind in ("finished", "queued")),
    ]),
    "wakeup": ([], [
        r"answer time minus job run time, 3 runs:$",
        rf"^  SQLite \(re-reads the job\)\s+median\s+{NUM} ms\s+p90\s+{NUM} ms$",
        rf"^  PostgreSQL \(LISTEN/NOTIFY\)\s+median\s+{NUM} ms\s+p90\s+{NUM} ms$",
    ]),
    "fleet": ([], [
        r"^fleet bench \(workers on loopback; tiny-sd 64 px, 4 steps; ",
        rf"^images/s, 2 clients x 1: 1 worker\s+{NUM}, 2 workers\s+{NUM} \({NUM}x\)$",
        rf"^queue's added latency per job: local\s+median\s+{NUM} ms, p90\s+{NUM} ms$",
        rf"^\s+celery median\s+{NUM} ms, p90\s+{NUM} ms$",
        rf"^killed worker's job: running again elsewhere after {NUM} s, done after {NUM} s",
    ]),
    "batching": ([], [
        rf"^    64 px: 8 single\s+{NUM} s, batched\s+{NUM} s: {NUM}x$",
        r"^kind\s+px\s+clients \| off img/s\s+p50\s+p95 \| on img/s\s+p50\s+p95\s+batch\s+rows \| speed-up",
        rf"^identical\s+64\s+2 \|\s+{NUM}\s+{NUM}\s+{NUM} \|\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM} \|\s+{NUM}x\s+{NUM}x$",
    ]),
    "families_cost": ([], [
        r"^model\s+build s\s+load s\s+steps\s+request s \(median\)$",
        *(rf"^{model}\s+{NUM}\s+{NUM}\s+4\s+{NUM}$" for model in
          ("tiny-sd", "tiny-sdxl", "tiny-flux", "tiny-flux-kontext", "tiny-flux-redux")),
    ]),
    "gpu": (["--device", "cpu"], [
        r"^bench/gpu\.py on cpu \(CPU, 1 threads\)",
        r"^model\s+px\s+dtype\s+compile\s+it/s\s+step ms\s+decode s\s+s/image\s+peak GiB$",
        *(rf"^{arch}\s+64 {dtype}\s+off\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}$"
          for arch in ("sd15-small", "sdxl-small") for dtype in ("fp32", "bf16")),
        rf"^  after job\s+3:\s+{NUM}$",
    ]),
    "pulid_embedder": ([], [
        r"^part\s+ms\s+weights MiB$",
        *(rf"^{re.escape(part)}\s+{NUM}\s+{NUM}$" for part in
          ("BiSeNet face parsing, 128 px (fp32)", "EVA02-CLIP-L-14-336 visual, 56 px", "IDFormer (4 ID tokens)")),
        rf"^total per request \(without antelopev2\)\s+{NUM}$",
    ]),
    "control_plane": ([], [
        r"^control plane bench \(\S+ \S+; up to 16 jobs x 4 steps of 10 ms, stand-in engine; ",
        rf"^    16 jobs in {NUM} s; commits per job by call site: ",
        *(rf"^{backend}\s+2 \|\s+{NUM} ->\s+{NUM} \|\s+{NUM}\s+{NUM} \|\s+{NUM}\s+{NUM} \| "
          rf"api\s+{NUM}\s+workers\s+{NUM}{pg}\s+\(pool checkouts {NUM}\)" for backend, pg in
          (("local", ""), ("celery", rf"\s+pg xact_commit\s+{NUM}"))),
        rf"^    CPU ms per job: api {NUM}, workers {NUM}, bench clients {NUM}; all {NUM} "
        rf"\(\d+ cores: a ceiling of {NUM}",
        rf"^    CPU ms per job: api {NUM}, workers {NUM}, postgres {NUM}, redis {NUM}, bench clients {NUM}; all {NUM}",
    ]),
    "control_floor": ([], [
        r"^control plane floor \(\S+ \S+; 100 jobs per piece, 8 clients; ",
        *(rf"^{piece}\s+{re.escape(name)}\s+{NUM}$" for piece, name in
          (("http", "http server"), ("http", "http clients"), ("broker", "publish (celery)"),
           ("broker", "consume + ack (kombu)"), ("broker", "redis"), ("store", "postgres"),
           ("store", "psycopg client"))),
        rf"^floor per job: {NUM} ms without the HTTP clients \({NUM} jobs/s on \d+ cores\), {NUM} ms with them",
    ]),
    "step_cache": ([], [
        r"^model\s+step cache\s+denoise s\s+speed-up\s+full/cached\s+PSNR dB$",
        rf"^demo-sd\s+off\s+{NUM}\s+1\.00x\s+-\s+-$",
        *(rf"^demo-sd\s+method deepcache, interval {i}\s+{NUM}\s+{NUM}x\s+\d+/\d+\s+{NUM}$" for i in (2, 3)),
        rf"^tiny-flux\s+method fbcache, threshold 0\.5\s+{NUM}\s+{NUM}x\s+\d+/\d+\s+{NUM}$",
        rf"^method deepcache, interval 3\s+{NUM}\s+{NUM}x\s+2/4\s+{NUM}$",
        rf"^method fbcache, threshold 0\.5\s+{NUM}\s+{NUM}x\s+\d+/\d+\s+(?:{NUM}|-)",
        rf"^grayscale\s+{NUM}\s+{NUM}\s+{NUM}%",
        rf"^mean kept\s+interval 3: {NUM}% \(PSNR to uncached, mean over the outputs {NUM} dB\)$",
    ]),
    "demo_quality": ([], [
        *(rf"^   {photo}\s+PSNR {NUM} dB  SSIM {NUM}$" for photo in ("chelsea", "rocket")),
        r"^prompt\s+str\s+PSNR in\s+SSIM in\s+PSNR tgt",
        *(rf"^'{word}'\s+0\.5\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}\s+[+-]{NUM}\s+[+-]{NUM}\s+\S.*{NUM} -> {NUM}"
          for word in ("grayscale", "sepia", "invert", "blur", "sketch")),
        rf"^4\. 26 generations: {NUM} s each on average \(64x64, \d+ steps x strength, fp32\)$",
    ]),
}


def test_every_bench_is_covered():
    assert {p.stem for p in (ROOT / "bench").glob("*.py")} == set(BENCHES)


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_quick_runs_and_prints_its_figures(name):
    extra, patterns = BENCHES[name]
    out = subprocess.run([sys.executable, f"bench/{name}.py", "--quick", *extra], cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, f"bench/{name}.py --quick exited {out.returncode}:\n{out.stderr[-4000:]}"
    missing = [p for p in patterns if not re.search(p, out.stdout, re.MULTILINE)]
    assert not missing, f"bench/{name}.py --quick did not print {missing}; it printed:\n{out.stdout[-4000:]}"
