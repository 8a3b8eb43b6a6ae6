"""`make test`'s runner: the suite in groups of test files, run as separate pytest processes, JOBS at a time.

Most of the suite keeps one core busy (tiny models in this process or in one server's worker, waits on servers
and receivers), so on CI's two cores one pytest run left half the machine idle (36 min wall, 35 min CPU). Files
that share an expensive session fixture from conftest.py (a server, the fleet...) stay in one group, so each
such fixture still starts once per group that uses it; the other files are packed into groups of about equal
estimated cost. Groups run largest first; each group's output is printed whole when it ends, then a summary.

    python tests/parallel.py [--jobs N] [--ignore PATH]... [--plan] [-- PYTEST_ARGS...]

--jobs 1 runs one plain pytest over everything (the old way). Exit status: 0 when every group passed (or
selected no test), else 1. Not a test module (no test_ prefix): pytest never collects it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Session fixtures too cheap to be worth keeping files together for (every server test uses them).
CHEAP_SHARED = {"models_root", "image_host", "tmp_path_factory", "worker_id", "testrun_uid"}
# Estimated seconds of a file beyond its tests' count (whole-suite runs on CI, 2 cores): the heavy ones.
KNOWN_COST_S = {
    "tests/test_benches.py": 330, "tests/test_schemathesis.py": 110, "tests/test_demo_sd.py": 120,
    "tests/test_lock_pythons.py": 70, "tests/test_fleet.py": 120, "tests/test_fleet_dialects.py": 40,
    "tests/test_standalone_worker.py": 50, "tests/test_gpu_path.py": 60, "tests/test_schema.py": 60,
    "tests/test_restart.py": 60, "tests/test_batching.py": 70, "tests/test_a1111_upstream.py": 40,
    "tests/test_docs.py": 30, "tests/test_install.py": 20, "tests/test_bounds.py": 50,
    "tests/test_hostile_edge.py": 40, "tests/test_identity_pulid.py": 40, "tests/test_identity_pulid_official.py": 40,
}
SECONDS_PER_TEST, SECONDS_PER_FUNCTION = 0.2, 1.0  # a parametrized case is mostly cheaper than a new test
OWN_SERVER_S = 15.0  # a file that starts a DiffserveServer of its own (module fixture)
SHARED_SERVER_S = 15.0  # a group's session server

# Runs inside the collecting pytest (-p): writes {file: [shared session fixtures]} and each file's test count.
_PLUGIN = '''
import json, os

def pytest_collection_finish(session):
    files = {}
    for item in session.items:
        path = item.nodeid.split("::")[0]
        entry = files.setdefault(path, {"tests": 0, "functions": set(), "shared": set(), "own_server": False})
        entry["tests"] += 1
        entry["functions"].add(getattr(item, "originalname", item.name))
        info = getattr(item, "_fixtureinfo", None)
        for name, defs in (info.name2fixturedefs.items() if info else ()):
            fixture = defs[-1]
            if fixture.scope == "session" and fixture.baseid in ("", "tests"):
                entry["shared"].add(name)
            elif fixture.scope == "module" and "server" in name or name in ("bounded", "edge", "hook_server"):
                entry["own_server"] = True
    out = {path: dict(e, shared=sorted(e["shared"]), functions=len(e["functions"])) for path, e in files.items()}
    with open(os.environ["DIFFSERVE_TEST_PLAN"], "w") as f:
        json.dump(out, f)
'''


def collect(pytest_args: list[str], ignore: list[str], work: Path) -> dict[str, dict]:
    (work / "plan_plugin.py").write_text(_PLUGIN)
    plan = work / "plan.json"
    env = dict(os.environ, DIFFSERVE_TEST_PLAN=str(plan), PYTHONPATH=os.pathsep.join(
        [str(work), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "plan_plugin",
           *[f"--ignore={p}" for p in ignore], *pytest_args]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 5) or not plan.exists():
        sys.stdout.write(done.stdout + done.stderr)
        raise SystemExit(f"collection failed (exit {done.returncode})")
    return json.loads(plan.read_text())


def cost(path: str, entry: dict) -> float:
    return (KNOWN_COST_S.get(path, 0) + entry["tests"] * SECONDS_PER_TEST
            + entry.get("functions", entry["tests"]) * SECONDS_PER_FUNCTION
            + (OWN_SERVER_S if entry["own_server"] else 0))


def make_groups(files: dict[str, dict], jobs: int) -> list[tuple[float, list[str]]]:
    """Files sharing an expensive session fixture in one group (union-find); the rest packed by cost."""
    parent = {path: path for path in files}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    owner: dict[str, str] = {}
    for path, entry in sorted(files.items()):
        for name in entry["shared"]:
            if name in CHEAP_SHARED:
                continue
            if name in owner:
                parent[find(path)] = find(owner[name])
            else:
                owner[name] = path
    linked: dict[str, list[str]] = {}
    for path in sorted(files):
        linked.setdefault(find(path), []).append(path)
    groups: list[tuple[float, list[str]]] = []
    loose: list[tuple[float, str]] = []
    for members in linked.values():
        shared = {n for p in members for n in files[p]["shared"]} - CHEAP_SHARED
        total = sum(cost(p, files[p]) for p in members)
        if shared:
            groups.append((total + SHARED_SERVER_S * len({n for n in shared if "server" in n or n == "fleet"}),
                           members))
        else:
            loose.append((total, members[0]))
    # pack the loose files into bins of about a (jobs * 4)th of the whole, so the slots finish together
    whole = sum(c for c, _ in groups) + sum(c for c, _ in loose)
    target = max(60.0, whole / max(1, jobs * 4))
    bins: list[tuple[float, list[str]]] = []
    for c, path in sorted(loose, reverse=True):
        for i, (bc, members) in enumerate(bins):
            if bc + c <= target:
                bins[i] = (bc + c, members + [path])
                break
        else:
            bins.append((c, [path]))
    return sorted(groups + bins, key=lambda g: -g[0])


def options_only(pytest_args: list[str]) -> list[str]:
    """pytest_args without the paths in it (a group names its own files)."""
    return [a for a in pytest_args if a.startswith("-") or not (ROOT / a.split("::")[0]).exists()]


def run_group(index: int, members: list[str], pytest_args: list[str], work: Path) -> tuple[int, float, Path]:
    log = work / f"group-{index}.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        rc = subprocess.run([sys.executable, "-m", "pytest", *options_only(pytest_args), *members], cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT).returncode
    return rc, time.monotonic() - started, log


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--ignore", action="append", default=[])
    parser.add_argument("--plan", action="store_true", help="print the groups and run nothing")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args(argv)
    if args.jobs <= 1:
        return subprocess.run([sys.executable, "-m", "pytest", *[f"--ignore={p}" for p in args.ignore],
                               *args.pytest_args], cwd=ROOT).returncode
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="diffserve-tests-") as tmp:
        work = Path(tmp)
        files = collect(args.pytest_args, args.ignore, work)
        groups = make_groups(files, args.jobs)
        print(f"{sum(f['tests'] for f in files.values())} tests in {len(files)} files, {len(groups)} groups, "
              f"{args.jobs} at a time (collected in {time.monotonic() - started:.0f} s)", flush=True)
        if args.plan:
            for estimate, members in groups:
                print(f"  ~{estimate:.0f} s: {' '.join(members)}")
            return 0
        results: dict[int, tuple[int, float]] = {}
        printing = threading.Lock()

        def one(index: int) -> None:
            members = groups[index][1]
            rc, seconds, log = run_group(index, members, args.pytest_args, work)
            results[index] = (rc, seconds)
            with printing:
                report(index, members, rc, seconds, log)

        def report(index: int, members: list[str], rc: int, seconds: float, log: Path) -> None:
            print(f"\n===== group {index + 1}/{len(groups)}: exit {rc} in {seconds:.0f} s (estimated "
                  f"{groups[index][0]:.0f}): {' '.join(members)}", flush=True)
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(one, range(len(groups))))
        print(f"\n===== {len(groups)} groups in {time.monotonic() - started:.0f} s", flush=True)
        failed = [i for i, (rc, _) in sorted(results.items()) if rc not in (0, 5)]
        for i, (rc, seconds) in sorted(results.items()):
            status = "ok" if rc in (0, 5) else f"FAILED (exit {rc})"
            print(f"  group {i + 1}: {status}, {seconds:.0f} s: {' '.join(groups[i][1])}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
