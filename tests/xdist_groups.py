"""How `make test` hands each test's group (tests/conftest.py) to pytest-xdist's scheduler.

pytest-xdist 3.8's `--dist loadgroup` passes an `xdist_group` mark to its scheduler as a suffix of the test's node
id, which pytest 9.2's structured node ids no longer take (pytest-xdist issue #1386, open): every test became a
group of its own, so each session server, and each module's own server, started in both processes. Here the
workers write each test's group to a file (`record`), and the controller's scheduler, xdist's own load-scope
scheduling, reads it once the workers have collected (`GroupScheduling`). Node ids stay as pytest makes them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

def groups_file() -> Path:
    """A new file for one run's groups (the controller makes it, `pytest_configure_node` tells the workers)."""
    fd, name = tempfile.mkstemp(prefix="xdist-groups-", suffix=".json")
    os.close(fd)
    return Path(name)


def record(path: Path, groups: dict[str, str]) -> None:
    """A worker writes node id -> group (both workers collect the same tests and write the same map)."""
    staged = path.with_name(f"{path.name}.{os.getpid()}")
    staged.write_text(json.dumps(groups))
    os.replace(staged, path)


class GroupScheduling(LoadScopeScheduling):
    """xdist's load-scope scheduling with the recorded groups as its scopes: a group goes to one process, whole,
    in the order collected (`--no-loadscope-reorder`: the conftest sorted the costliest groups first)."""

    def __init__(self, config, log, path: Path) -> None:
        super().__init__(config, log)
        self.path = path
        self.groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self.groups is None:  # first asked in schedule(), once every worker has collected and written it
            self.groups = json.loads(self.path.read_text() or "{}")
            if not self.groups:
                raise RuntimeError(f"no test groups were recorded in {self.path}")
        return self.groups.get(nodeid, nodeid)
