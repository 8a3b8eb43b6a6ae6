from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

from .servers import DiffserveServer, ImageHost, png_bytes

GROUPS_FILE = pytest.StashKey[Path]()  # xdist's controller: where its workers write each test's group
WORKER_GROUPS_FILE = "diffserve_test_groups"  # the workers' workerinput key for it


def pytest_configure(config):
    """One OpenMP thread for torch (and numpy's BLAS) in the test processes, unless the caller set another
    count: `make test` runs two pytest processes on two cores beside the servers they start, and two OpenMP
    threads that wait on each other on a busy core made demo-sd's generations 10-20x slower than one (measured
    on 2 shared cores; the strength test hit CI's 300 s timeout). Servers and workers set their own count
    (DIFFSERVE_TORCH_THREADS=1 in tests/servers.py), scripts theirs (--threads)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if getattr(config.option, "dist", "no") == "loadgroup" and not hasattr(config, "workerinput"):
        from .xdist_groups import groups_file

        config.stash[GROUPS_FILE] = groups_file()  # xdist's controller: the workers write the groups there


def pytest_unconfigure(config):
    if GROUPS_FILE in config.stash:
        config.stash[GROUPS_FILE].unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist's controller tells each worker where to write the groups (tests/xdist_groups.py)."""
    if GROUPS_FILE in node.config.stash:
        node.workerinput[WORKER_GROUPS_FILE] = str(node.config.stash[GROUPS_FILE])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup`: the groups of pytest_collection_modifyitems below, read from the workers' file."""
    if GROUPS_FILE in config.stash:
        from .xdist_groups import GroupScheduling

        return GroupScheduling(config, log, config.stash[GROUPS_FILE])
    return None


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    """One built tiny model shared by every server the tests start."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def image_host():
    host = ImageHost().start()
    host.add("/cat.png", png_bytes(64, 64))
    host.add("/wide.png", png_bytes(100, 70))
    host.add("/cat.jpg", png_bytes(64, 64, fmt="JPEG"), "image/jpeg")
    host.add("/not-an-image.png", b"<html>hello</html>", "text/html")
    yield host
    host.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, models_root):
    srv = DiffserveServer(tmp_path_factory.mktemp("data"), models_root).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def key(server):
    return server.create_key("--name", "tests")


@pytest.fixture(scope="session")
def other_key(server):
    return server.create_key("--name", "someone-else")


@pytest.fixture(scope="session")
def dialect_server(tmp_path_factory, models_root):
    """One server shared by the dialect tests (realtime, pony, HiDream, Qolaba, management), with the
    operator settings they need: see tests/dialects.py."""
    from .dialects import start_dialect_server

    srv = start_dialect_server(tmp_path_factory.mktemp("dialects"), models_root)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def hardened_server(tmp_path_factory, models_root):
    """Private URLs refused, default limits: shared by test_hostile and test_schemathesis (tests/hardened.py)."""
    from .hardened import start_hardened_server

    srv = start_hardened_server(tmp_path_factory.mktemp("hardened"), models_root)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Engine-level tests run tiny models in this process: one torch thread is as fast for tiny tensors,
    and fair to a shared machine. The previous thread count is restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def jobs_server(tmp_path_factory, models_root):
    """A server of its own for the native job API, the CLI client and the playground (they cancel and count)."""
    srv = DiffserveServer(tmp_path_factory.mktemp("jobs"), models_root).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory, models_root):
    """The fleet (tests/fleet.py): PostgreSQL, Redis, SeaweedFS, one API with no workers of its own, two
    `diffserve worker` processes on hosts of their own. Shared by test_fleet.py and test_fleet_dialects.py."""
    import json

    from .dialects import QOLABA_APPS, models_file
    from .fleet import Fleet, can_make_hosts

    def models_json(root):
        models = models_file(root)["models"]
        # tiny-sd-b: the same weights under another id, so "has this model loaded" differs between workers
        models["tiny-sd-b"] = {"kind": "folder", "location": str(root / "tiny-sd"), "builtin": "tiny-sd",
                               "limits": {"min_size": 32, "max_size": 512}}
        return json.dumps({"models": models})

    f = Fleet(tmp_path_factory.mktemp("fleet"), models_root, hosts=2 if can_make_hosts() else 0, env_overrides={
        "DIFFSERVE_AFFINITY_WAIT_S": "30",  # 40 queued jobs must not all be overdue (oldest first) in the test
        "DIFFSERVE_MAX_LOADED_MODELS": "1",  # a worker switching models loads one: loads are countable
        "DIFFSERVE_QOLABA_APPS": json.dumps(QOLABA_APPS),
        "DIFFSERVE_REALTIME_STEPS": "2",
    }, models_json=models_json)
    try:
        f.start(apis=1, workers=2)
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="session")
def fleet_admin(fleet):
    return fleet.api.create_key("--admin")


# `make test` runs the suite on two processes (pytest-xdist, `-n 2 --dist loadgroup`): every test is put in the
# group of its file, and files sharing an expensive session fixture of this conftest (a server, the fleet...) are
# one group, so such a fixture still starts once and a module's own server too (one process runs a group whole:
# tests/xdist_groups.py); the tests of a SPLIT_FILES file are groups of their own. The groups that cost most run
# first.
CHEAP_SHARED = {"models_root", "image_host"}
# files whose tests share nothing costly: each test is a group of its own, so the two processes can split the file
# (test_benches: each bench's --quick run starts its own servers; one group of ~6 minutes could not be balanced)
SPLIT_FILES = {"test_benches.py"}
FILE_COST_S = {  # seconds a file takes on one of CI's two processes (quiet-run and CI durations); others: 1 s a test
    **{f"test_benches.py::test_bench_quick_runs_and_prints_its_figures[{bench}]": s for bench, s in {
        "latency": 95, "batching": 93, "fleet": 87, "wakeup": 50, "control_plane": 45, "demo_quality": 31,
        "gpu": 29, "families_cost": 25, "step_cache": 20, "pulid_embedder": 5}.items()},
    "test_demo_sd.py": 185, "test_layout.py": 30, "test_lock_pythons.py": 75,
    "test_fleet.py": 150, "test_partition.py": 180, "test_fleet_dialects.py": 25,  # the fleet
    "test_schemathesis.py": 110, "test_families_control.py": 110, "test_modelslab_v6.py": 70,
    "test_a1111_upstream.py": 25, "test_load_balancing.py": 110, "test_batching.py": 90, "test_gpu_path.py": 70,
    "test_schema.py": 70, "test_restart.py": 65, "test_standalone_worker.py": 55, "test_transient_errors.py": 60,
    "test_webhooks.py": 50,
}


def pytest_collection_modifyitems(config, items):
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    def unit(item) -> str:  # what a group is made of: a file, or a test of a SPLIT_FILES file
        path = item.nodeid.split("::")[0]
        return item.nodeid if path.rsplit("/", 1)[-1] in SPLIT_FILES else path

    for item in items:
        path = unit(item)
        info = getattr(item, "_fixtureinfo", None)
        shared = [name for name, defs in (info.name2fixturedefs.items() if info else ())
                  if defs[-1].scope == "session" and name not in CHEAP_SHARED
                  and getattr(defs[-1].func, "__module__", "").startswith("tests.")]  # this suite's, not pytest's
        for name in shared:
            parent[find(path)] = find("fixture:" + name)
    counts = collections.Counter(unit(item) for item in items)
    cost: dict[str, float] = collections.Counter()
    for path, count in counts.items():
        cost[find(path)] += FILE_COST_S.get(path.rsplit("/", 1)[-1], count)
    order = {group: rank for rank, group in enumerate(sorted(cost, key=lambda g: (-cost[g], g)))}
    items.sort(key=lambda item: order[find(unit(item))])  # stable: a file keeps its order
    groups_path = getattr(config, "workerinput", {}).get(WORKER_GROUPS_FILE)
    if groups_path:  # an xdist worker under `--dist loadgroup` (tests/xdist_groups.py)
        from .xdist_groups import record

        record(Path(groups_path), {item.nodeid: find(unit(item)).replace("fixture:", "shared-") for item in items})
