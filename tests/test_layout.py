"""The package map (docs/layout.md) as rules: an AST walk of diffserve/ fails when one is broken.

Every import counts -- module level, inside functions and under TYPE_CHECKING -- because a circle that
only type checkers or lazy imports see is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "diffserve"
# The model stack: only worker processes import these at module level (the API process stays small).
MODEL_STACK = {"torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "tomesd",
               "onnxruntime", "insightface", "onnx", "scipy", "skimage"}

# Who may import whom (by area: a package under diffserve/, `engine.<room>` for the engine's rooms). An area
# always may import itself. The map, with the reason for each line, is docs/layout.md.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "metrics": set(),
    "config": {"core"},
    "store": {"core", "config"},
    "jobqueue": {"core", "config", "store"},
    "storage": {"core", "config", "store"},
    "media": {"core", "config"},
    "webhooks": {"core", "config", "store", "storage", "media"},
    "engine.models": {"core", "engine.tiny", "engine.demo"},
    "engine.tiny": {"core", "engine.identity"},
    "engine.demo": {"core", "engine.tiny"},
    "engine.identity": {"core"},
    "engine.stepcache": {"core"},
    "engine.families": {"core", "engine.models", "engine.identity", "engine.controls.base", "engine.stepcache"},
    "engine.controls": {"core", "engine.models", "engine.families", "engine.tiny"},
    "engine": {"core", "engine.models", "engine.controls", "engine.families", "engine.identity", "engine.tiny",
               "engine.demo", "engine.stepcache"},
    "service": {"core", "config", "store", "jobqueue", "storage", "media", "webhooks", "engine.models",
                "engine.identity", "engine"},
    "workers": {"core", "config", "store", "jobqueue", "storage", "media", "webhooks", "engine", "engine.models",
                "metrics"},
    "management": {"core", "config", "store", "jobqueue", "storage", "media", "service", "engine.models",
                   "engine.tiny"},
    "api": {"core", "config", "store", "jobqueue", "storage", "media", "webhooks", "service", "management", "metrics",
            "engine.models", "workers.placement", "workers.supervisor"},
    "cli": {"core", "config", "store", "engine.models", "api", "workers.placement", "workers.worker"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file, relative ones resolved."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append((base, id(node) in top_level))
            found += [(f"{base}.{alias.name}", id(node) in top_level) for alias in node.names]  # submodules
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m, _ in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def area(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return ""
    if parts[0] == "engine" and len(parts) > 1 and (PACKAGE / "engine" / parts[1]).is_dir():
        return f"engine.{parts[1]}"
    return parts[0]


def allowed(source: str, target: str) -> bool:
    here, there = area(source), area(target)
    if here == there or there == "":
        return True
    rest = target.split(".", 1)[1]  # "engine.controls.base", "workers.placement"...
    return any(rest == rule or rest.startswith(rule + ".") or there == rule for rule in ALLOWED[here])


def test_every_area_is_on_the_map():
    assert {area(m) for m in MODULES} - {""} == set(ALLOWED)


def test_no_import_circles():
    """Tarjan's strongly connected components: every component is one module."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == []


def test_each_area_imports_only_what_the_map_allows():
    broken = sorted(f"{src} -> {dst}" for src, targets in GRAPH.items() for dst in targets if not allowed(src, dst))
    assert broken == []


def test_the_api_process_never_imports_the_model_stack():
    """Everything the server process loads at import time (the API app and the CLI) is torch-free:
    no module-level import of the model stack anywhere in that closure."""
    seen, todo = set(), ["diffserve.cli.main", "diffserve.api.app"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for target, top in imports_of(MODULES[module]):
            if top and target in MODULES:
                todo.append(target)
            elif top:
                assert target.split(".")[0] not in MODEL_STACK, f"{module} imports {target} at module level"
    assert "diffserve.engine.models.registry" in seen and "diffserve.engine.generate" not in seen


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= 500


def test_the_modelslab_dialect_has_one_route_table():
    """Its routes (v6, v7, enterprise, realtime, pony, their fetch forms, update_s3) are rows of the table in
    api/modelslab/router.py: no other module of the dialect makes a router or adds a route, and realtime and
    pony are its sub-modules, not packages of their own."""
    registering = set()
    for path in (PACKAGE / "api" / "modelslab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = getattr(node.func, "attr", getattr(node.func, "id", None))
                if called in {"APIRouter", "add_api_route", "api_route", "post", "include_router"}:
                    registering.add(path.name)
    assert registering == {"router.py"}
    assert not [p for name in ("realtime", "pony") for p in (PACKAGE / "api" / name).glob("*.py")]


TESTS = Path(__file__).resolve().parent
VENDORED_TESTS = {"a1111_upstream"}  # upstream's own test files, kept as upstream wrote them


@pytest.mark.parametrize(
    "path",
    sorted(p for p in TESTS.rglob("*.py") if not VENDORED_TESTS & set(p.relative_to(TESTS).parts)),
    ids=lambda p: str(p.relative_to(TESTS)),
)
def test_no_test_module_is_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= 500, f"tests/{path.relative_to(TESTS)}: split it by topic"


def test_the_rules_catch_a_broken_one():
    assert not allowed("diffserve.engine.generate", "diffserve.api.app")
    assert not allowed("diffserve.api.app", "diffserve.engine.generate")
    assert not allowed("diffserve.store.jobs", "diffserve.engine.models.registry")
    assert not allowed("diffserve.engine.identity.pulid", "diffserve.engine.models.registry")
    assert allowed("diffserve.engine.families.flux_control", "diffserve.engine.controls.base")
    assert not allowed("diffserve.engine.families.flux_control", "diffserve.engine.controls.chain")


# -- a job's life has one owner (store/ledger.py) ------------------------------------------------------------
LEDGER = "diffserve.store.ledger"


def job_status_writes(source: str) -> list[int]:
    """Lines that write a job's status: `update(JobRow)` / `insert(JobRow)` chains whose `.values(...)` name
    `status`, `JobRow(status=...)`, `<x>.status = ...` in a module that uses JobRow, raw SQL updating jobs'
    status."""
    tree = ast.parse(source)
    uses_jobrow = any(isinstance(n, ast.Name) and n.id == "JobRow" for n in ast.walk(tree))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            status_kw = any(k.arg == "status" for k in node.keywords)
            if isinstance(func, ast.Name) and func.id == "JobRow" and status_kw:
                lines.append(node.lineno)
            elif isinstance(func, ast.Attribute) and func.attr == "values" and status_kw and any(
                    isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("update", "insert")
                    and n.args and isinstance(n.args[0], ast.Name) and n.args[0].id == "JobRow"
                    for n in ast.walk(func.value)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign) and uses_jobrow:
            if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in node.targets):
                lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.search(r"update\s+jobs\s+set[^;]*\bstatus\b", node.value, re.IGNORECASE | re.DOTALL):
                lines.append(node.lineno)
    return lines


def test_job_status_changes_only_in_the_ledger():
    """Every terminal transition (succeed, fail, cancel, requeue) and every other write of a job's status is
    one of the ledger's transactions: no other module of diffserve/ writes JobRow.status."""
    found = {name: job_status_writes(path.read_text()) for name, path in MODULES.items() if name != LEDGER}
    assert {name: lines for name, lines in found.items() if lines} == {}
    assert job_status_writes(MODULES[LEDGER].read_text())  # the rule sees the ledger's own writes


def test_the_status_rule_catches_a_broken_one():
    assert job_status_writes("s.execute(update(JobRow).where(JobRow.id == 1).values(status='failed'))") == [1]
    assert job_status_writes("row = s.get(JobRow, 1)\nrow.status = 'queued'") == [2]
    assert job_status_writes("s.execute(text(\"UPDATE jobs SET error = 'x', status = 'failed'\"))") == [1]
    assert job_status_writes("s.execute(update(JobRow).values(webhook_status='x'))") == []


def private_uses_outside_self(source: str) -> list[str]:
    """`x._name` where x is not `self` (another object's private members), and annotations typed `Any`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(ast.unparse(node))
        elif isinstance(node, ast.AnnAssign) and "Any" in ast.unparse(node.annotation):
            found.append(ast.unparse(node))
    return found


def test_the_batcher_runs_jobs_through_the_runner_not_the_worker():
    """workers/batcher.py takes the job runner (workers/runner.py), not the worker: it imports nothing of
    workers/worker.py and touches no other object's private members."""
    batcher = "diffserve.workers.batcher"
    assert "diffserve.workers.worker" not in GRAPH[batcher]
    assert "diffserve.workers.runner" in GRAPH[batcher]
    assert private_uses_outside_self(MODULES[batcher].read_text()) == []
    assert private_uses_outside_self("w = self.worker\nw._stored(w.jobs.fail)") == ["w._stored"]
    assert private_uses_outside_self("class B:\n    worker: Any") == ["worker: Any"]
