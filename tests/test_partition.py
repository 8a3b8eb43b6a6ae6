"""Network partitions in the fleet (issue 33): a worker that runs a job is cut off from the store, the broker and
S3 -- its link drops every packet, or refuses every connection with a TCP reset -- for longer than the stale
timeout, so its job is handed on to the other worker, which answers it. Then the link heals, and the cut-off
worker, which kept running all along, comes back and finishes whatever it still does. Cut during a run, at the
last step, and inside a batch of several jobs.

What a user would notice must not happen: a job that ends twice (a second webhook, a status, worker or end time
that changes after it was final), a job that ends failed because of a transient error while its retry elsewhere
succeeded, or an image that changes behind a URL already answered (the bytes fetched right after the answer are
the bytes fetched once the cut-off worker had its time; the object is not written again).

Runs on the shared fleet (conftest `fleet`: stale timeout DIFFSERVE_WORKER_STALE_S=3, batching on, two workers on
hosts of their own); needs root, iproute2 and iptables (scripts/system-deps.sh)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote, urlsplit

import pytest

from . import web
from .fleet import Fleet, can_cut_hosts
from .jobs_helpers import Jobs, data_uri
from .waiting import wait_until
from .webhook_receiver import Receiver

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not can_cut_hosts(), reason="needs root, iproute2 and iptables")]

# txt2img runs alone even with batching on (core/batching.py): the worker's single path; img2img rows batch
SINGLE = dict(mode="txt2img", init_image="", width=96, height=96, steps=20)
FINISHED = ("succeeded", "failed", "cancelled")
HANDED_ON_S = 90  # cut off: its job is stale after 3 s, released within 2 s, then runs on the other worker
BACK_S = 120  # healed: the cut-off worker's connections come back (dropped ones after TCP's next retransmission)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def jobs(fleet):
    if len(fleet.host_list) < 2:
        pytest.skip("the fleet's workers are not on hosts of their own")
    for i in range(2):  # one on each host (a test before may have killed one and failed before restarting it)
        if i not in fleet.workers or fleet.workers[i].poll() is not None:
            fleet.workers.pop(i, None)
            fleet.start_worker(i)
    fleet.wait_workers(2)
    return Jobs(fleet.api, fleet.api.create_key("--max-queued", "0"))


@dataclass
class Answer:
    """A job as it was first seen finished, and its images' bytes and S3 write time fetched at that moment."""

    job: dict
    images: list[bytes]
    written: list[object]


@dataclass
class Watch:
    """Polls jobs: every status each showed, and each one's first finished state (the answer a client got)."""

    fleet: Fleet
    jobs: Jobs
    ids: list[int]
    seen: dict[int, list[str]] = field(default_factory=dict)
    answers: dict[int, Answer] = field(default_factory=dict)

    def poll(self) -> dict[int, dict]:
        now = {}
        for job_id in self.ids:
            job = now[job_id] = self.jobs.get(job_id)
            statuses = self.seen.setdefault(job_id, [])
            if not statuses or statuses[-1] != job["status"]:
                statuses.append(job["status"])
            if job["status"] in FINISHED and job_id not in self.answers:
                self.answers[job_id] = Answer(job, [web.get(u, timeout=30).content for u in job["outputs"]],
                                              [self.written(u) for u in job["outputs"]])
        return now

    def all_answered(self) -> bool:
        self.poll()
        return len(self.answers) == len(self.ids)

    def written(self, url: str) -> object:
        bucket, _, key = unquote(urlsplit(url).path).lstrip("/").partition("/")
        return self.fleet.s3.client().head_object(Bucket=bucket, Key=key)["LastModified"]


def worker_index(fleet, admin: str, worker_id: str) -> int:
    row = next(w for w in fleet.worker_rows(admin) if w["worker_id"] == worker_id)
    return int(row["labels"][0].removeprefix("host"))


def idle_workers(fleet, admin: str, count: int = 2, timeout: float = BACK_S) -> list[dict]:
    """Every worker live, idle and holding no job (a cut-off worker back after its partition, done with it)."""
    return wait_until(lambda: fleet.worker_rows(admin), timeout, every=0.5, what=f"{count} idle workers",
                      accept=lambda rows: len(rows) >= count and all(
                          w["state"] == "idle" and not w.get("current_job") for w in rows))


def handed_on(cut_off: str):
    """Every job runs on another worker now, or has ended."""
    return lambda js: all(j["status"] in FINISHED or (j["status"] == "running" and j["worker"] != cut_off)
                          for j in js.values())


def answered(js: dict[int, dict]) -> bool:
    return all(j["status"] in FINISHED for j in js.values())


def run_partition(fleet, admin, jobs, receiver, how: str, heal: str, submit, cut_when) -> dict | None:
    """Submit jobs (`submit()` -> ids); when `cut_when(job)` holds for the first, cut the host of the worker
    running it (`how`: drop or refuse); heal once every job runs elsewhere (heal="handed_on": the retries are
    still running when the cut-off worker comes back) or once every job was answered (heal="answered"); give the
    cut-off worker time to come back and finish; then check what a client sees. None (nothing checked) when
    the first job ended before its cut point; else figures for the report."""
    t0 = time.monotonic()
    idle_workers(fleet, admin)
    ids = submit()
    watch = Watch(fleet, jobs, ids)
    first = wait_until(lambda: jobs.get(ids[0]), 120, every=0.02, what=f"job {ids[0]} to reach its cut point",
                       accept=lambda j: cut_when(j) or j["status"] in FINISHED)
    if first["status"] != "running":
        wait_until(watch.all_answered, 120, what=f"jobs {ids} to end")
        return None
    cut_off = first["worker"]
    host = fleet.host_of(worker_index(fleet, admin, cut_off))
    host.cut(how)
    cut_at = time.monotonic()
    try:
        wait_until(watch.poll, HANDED_ON_S, every=0.1, accept=handed_on(cut_off) if heal == "handed_on" else answered,
                   what=f"jobs {ids} {heal} while {host.name} is cut off")
    finally:
        host.heal()
    healed_at = time.monotonic()
    wait_until(watch.poll, HANDED_ON_S, every=0.1, accept=answered, what=f"jobs {ids} answered")
    answered_at = time.monotonic()
    idle_workers(fleet, admin)  # the cut-off worker is back and done with what it held
    back_at = time.monotonic()
    time.sleep(2)  # webhook rounds (0.5 s) for anything the cut-off worker's writes may have finished again
    final = watch.poll()
    elsewhere = [j for j in ids if watch.answers[j].job["worker"] != cut_off]
    figures = dict(how=how, heal=heal, jobs=len(ids), elsewhere=len(elsewhere), cut_at=first["progress"],
                   cut_s=round(healed_at - cut_at, 1), answered_s=round(answered_at - cut_at, 1),
                   back_s=round(back_at - healed_at, 1), total_s=round(time.monotonic() - t0, 1),
                   run_s=[run_s(watch.answers[j].job) for j in ids], seen=watch.seen)
    print("partition", figures)

    for job_id in ids:
        answer, now = watch.answers[job_id], final[job_id]
        # no job ended failed (a transient error of the cut-off worker) while its retry elsewhere succeeded
        assert "failed" not in watch.seen[job_id], (job_id, watch.seen[job_id], now["error"])
        assert answer.job["status"] == "succeeded", answer.job
        # it ended once: nothing about its end changed after the answer
        for name in ("status", "worker", "finished_at", "error"):
            assert now[name] == answer.job[name], (job_id, name, answer.job[name], now[name])
        assert [urlsplit(u).path for u in now["outputs"]] == [urlsplit(u).path for u in answer.job["outputs"]]
        # its images never change behind the URL answered: same bytes, and the object was not written again
        assert [web.get(u, timeout=30).content for u in answer.job["outputs"]] == answer.images, job_id
        assert [watch.written(u) for u in answer.job["outputs"]] == answer.written, job_id
    deliveries = [r.payload for r in receiver.received if r.payload.get("id") in ids]
    by_job = {job_id: [p["status"] for p in deliveries if p["id"] == job_id] for job_id in ids}
    assert all(sent == ["success"] for sent in by_job.values()), by_job  # one webhook per job, a success
    assert ids[0] in elsewhere, (first, watch.answers[ids[0]].job)  # the cut-off worker's job ran elsewhere
    return figures


def run_s(job: dict) -> float | None:
    if not (job["started_at"] and job["finished_at"]):
        return None
    at = [datetime.fromisoformat(job[k].rstrip("Z")) for k in ("started_at", "finished_at")]
    return round((at[1] - at[0]).total_seconds(), 1)


def running(j: dict) -> bool:
    return j["status"] == "running" and bool(j["worker"]) and (j["progress"]["step"] or 0) >= 2


def at_last_step(j: dict) -> bool:
    step, total = j["progress"]["step"] or 0, j["progress"]["total"] or 0
    return j["status"] == "running" and bool(j["worker"]) and total > 0 and step >= total - 1


# heal "answered": the cut-off worker comes back after the answer (its late writes must change nothing);
# "handed_on": it comes back while the retries run (what it wrote or failed meanwhile must not end the jobs).
# Refused connections fail its calls at once (it ends its run with errors while cut); dropped ones hang them.
@pytest.mark.parametrize("how,heal", [("drop", "answered"), ("refuse", "handed_on")])
def test_a_worker_cut_off_during_a_run(fleet, fleet_admin, jobs, receiver, how, heal):
    assert run_partition(fleet, fleet_admin, jobs, receiver, how, heal,
                         lambda: [jobs.submit(**SINGLE, seed=1, webhook=receiver.url)["id"]], running)


@pytest.mark.parametrize("how,heal", [("drop", "handed_on"), ("refuse", "handed_on")])
def test_a_worker_cut_off_at_the_last_step(fleet, fleet_admin, jobs, receiver, how, heal):
    """Cut when the job's progress shows its last step (written at most every 0.25 s: a job whose steps are
    quicker may end unseen; then a larger one, each step slower)."""
    for side in (256, 384, 512):
        body = dict(SINGLE, width=side, height=side, steps=6, seed=2, webhook=receiver.url)
        if run_partition(fleet, fleet_admin, jobs, receiver, how, heal, lambda: [jobs.submit(**body)["id"]],
                         at_last_step):
            return
    pytest.fail("no job was seen at its last step")


@pytest.mark.parametrize("how,heal", [("drop", "answered"), ("refuse", "handed_on")])
def test_a_worker_cut_off_inside_a_batch(fleet, fleet_admin, jobs, receiver, how, heal):
    """Four img2img jobs in one worker's batch (the other worker paused while they are submitted, so the first
    claims them all; it holds no job, so a pause past the stale timeout changes nothing), with different step
    counts: rows end at different ticks, some while cut."""
    first_free = min(fleet.workers)
    other = next(i for i in fleet.workers if fleet.host_of(i) is not fleet.host_of(first_free))

    def submit() -> list[int]:
        fleet.pause_worker(other)
        try:
            ids = [jobs.submit(init_image=data_uri(64, 64), steps=steps, strength=1.0, seed=10 + n,
                               webhook=receiver.url)["id"] for n, steps in enumerate((10, 12, 14, 16))]
            wait_until(lambda: [jobs.get(j) for j in ids], 10, every=0.05, what=f"jobs {ids} in one batch",
                       accept=lambda js: all(j["status"] == "running" for j in js)
                       and len({j["worker"] for j in js}) == 1)
        finally:
            fleet.pause_worker(other, paused=False)
        return ids

    assert run_partition(fleet, fleet_admin, jobs, receiver, how, heal, submit, running)
