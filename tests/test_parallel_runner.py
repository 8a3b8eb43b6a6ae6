"""tests/parallel.py (make test's runner): files sharing an expensive session fixture stay in one pytest process,
the others are packed by estimated cost, largest group first; paths in the pytest arguments are left to groups."""

from __future__ import annotations

from .parallel import CHEAP_SHARED, make_groups, options_only


def entry(tests: int = 1, *shared: str, own_server: bool = False) -> dict:
    return {"tests": tests, "shared": sorted(shared), "own_server": own_server}


def test_files_sharing_a_session_server_run_in_one_group():
    files = {
        "tests/test_a.py": entry(3, "server", "models_root"),
        "tests/test_b.py": entry(2, "server", "key"),
        "tests/test_c.py": entry(1, "key", "dialect_server"),  # key depends on server: c joins a and b
        "tests/test_d.py": entry(4, "fleet"),
        "tests/test_e.py": entry(5, "models_root", "image_host"),  # cheap fixtures only: loose
        "tests/test_f.py": entry(5),
    }
    groups = make_groups(files, jobs=2)
    members = sorted(sorted(g) for _, g in groups)
    assert ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"] in members
    assert ["tests/test_d.py"] in members
    assert not any("tests/test_a.py" in g and "tests/test_d.py" in g for g in members)
    assert sorted(p for g in members for p in g) == sorted(files)  # every file once
    assert [c for c, _ in groups] == sorted((c for c, _ in groups), reverse=True)  # largest first
    assert {"models_root", "image_host"} <= CHEAP_SHARED


def test_loose_files_are_packed_into_bins_of_about_equal_cost():
    files = {f"tests/test_{i:02}.py": entry(30) for i in range(16)}  # 30 s each, 480 s in all
    groups = make_groups(files, jobs=2)
    assert 2 <= len(groups) <= 8  # neither one process per file nor one for all
    assert max(c for c, _ in groups) <= 120
    assert sum(len(g) for _, g in groups) == 16


def test_known_heavy_files_weigh_more():
    files = {"tests/test_benches.py": entry(9), "tests/test_x.py": entry(9)}
    (heavy, first), (light, second) = make_groups(files, jobs=2)
    assert first == ["tests/test_benches.py"] and heavy > light


def test_paths_are_dropped_from_the_arguments_each_group_gets():
    args = ["-q", "-ra", "--durations=20", "-k", "not slow", "tests/test_layout.py", "tests/test_waiting.py::test_x"]
    assert options_only(args) == ["-q", "-ra", "--durations=20", "-k", "not slow"]
