"""The one lock installs on every Python the project supports, and either README command may come first.

requirements/runtime.txt is universal (uv's `--universal`: environment markers where an interpreter differs,
e.g. async-timeout, which redis needs below Python 3.11.3). Each interpreter found here other than the test
venv's own (Debian 12's /usr/bin/python3 3.11.2, pyenv's 3.11 / 3.12 / 3.13) gets a scratch venv with the
lock installed as the Makefile installs it (`--no-deps --require-hashes`: the lines whose markers hold), and then
the drift check the Makefile runs (requirements/check_venv.py, which also runs `pip check`). The installer here is
uv (`uv pip install`, same flags; about 30 s a venv where pip took 2-3 min): what is tested is the lock, and pip
reads its markers and hashes as uv does. torch is added only where its wheel is on this machine (CPython 3.11);
elsewhere the three packages that declare torch may say so in `pip check`, and nothing else may be wrong.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME, TEST = ROOT / "requirements" / "runtime.txt", ROOT / "requirements" / "test.txt"
CHECK = ROOT / "requirements" / "check_venv.py"
TORCH = "torch==2.13.0"  # the Makefile's default TORCH: a CPU wheel for CPython 3.11 on this machine
TORCH_WHEEL_FOR = "3.11."
UV = str(Path(sys.executable).with_name("uv"))  # from the test lock
NO_TORCH_HERE = "requires torch, which is not installed."


def interpreters() -> dict[str, str]:
    """Full version -> path, for every CPython >= 3.11 on this machine except the one running the tests."""
    found: dict[str, str] = {}
    candidates = ["/usr/bin/python3"] + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        out = subprocess.run([path, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True)
        version = out.stdout.strip()
        if out.returncode or tuple(int(p) for p in version.split(".")[:2]) < (3, 11):
            continue
        if version != "%d.%d.%d" % sys.version_info[:3]:
            found.setdefault(version, path)
    return found


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


def pip_find_links() -> list[str]:
    """The folders pip is configured to find wheels in (where `pip install torch==2.13.0` finds the CPU wheel)."""
    listed = run(sys.executable, "-m", "pip", "config", "list").stdout.splitlines()
    values = [line.split("=", 1)[1].strip("'\"") for line in listed if line.split("=", 1)[0].endswith("find-links")]
    return sorted({folder for value in values for folder in value.split()})


def install_and_check(python: str, version: str, venv: Path) -> list[str]:
    """Problems left after installing the runtime lock into a new venv of `python` (empty: all good)."""
    made = run(python, "-m", "venv", str(venv))
    if made.returncode:
        return [f"venv: {made.stderr.strip()[-500:]}"]
    py = str(venv / "bin" / "python")
    lock = run(UV, "pip", "install", "-q", "--python", py, "--no-deps", "--require-hashes", "-r", str(RUNTIME))
    if lock.returncode:
        return [f"pip install -r runtime.txt: {lock.stderr.strip()[-1500:]}"]
    with_torch = version.startswith(TORCH_WHEEL_FOR)
    if with_torch:
        # the wheel on this machine's disk (pip's configured find-links); its needs are the locked ones
        links = [arg for folder in pip_find_links() for arg in ("--find-links", folder)]
        torch = run(UV, "pip", "install", "-q", "--python", py, "--no-deps", *links, TORCH)
        if torch.returncode:
            return [f"pip install {TORCH}: {torch.stderr.strip()[-1500:]}"]
    check = run(py, str(CHECK), str(RUNTIME))
    problems = [line for line in check.stderr.splitlines() if line.strip()]
    if not with_torch:
        problems = [line for line in problems if not line.endswith(NO_TORCH_HERE)]
    return problems


def test_the_lock_installs_exactly_on_every_python_here(tmp_path):
    found = interpreters()
    if not found:
        pytest.skip("no other CPython >= 3.11 on this machine")
    with ThreadPoolExecutor(max_workers=len(found)) as pool:
        results = {version: pool.submit(install_and_check, path, version, tmp_path / f"py{version}")
                   for version, path in found.items()}
        problems = {version: future.result() for version, future in results.items()}
    assert problems == {version: [] for version in found}, problems


def test_debian_python_gets_the_package_its_version_needs():
    """The marker that Debian 12's 3.11.2 needs is in the lock (redis imports async_timeout below 3.11.3)."""
    lines = [line for line in RUNTIME.read_text().splitlines() if line.startswith("async-timeout==")]
    assert len(lines) == 1 and "python_full_version < '3.11.3'" in lines[0]


def test_serve_after_test_accepts_the_test_venv():
    """`make serve` checks the venv against runtime.txt *or* test.txt, so it runs after `make test` (and the
    runtime lock alone would refuse this venv: the test tools are not in it)."""
    alone = run(sys.executable, str(CHECK), str(RUNTIME))
    assert alone.returncode == 1 and "is installed but not in runtime.txt" in alone.stderr
    either = run(sys.executable, str(CHECK), str(RUNTIME), str(TEST))
    assert either.returncode == 0, either.stderr
    makefile = (ROOT / "Makefile").read_text()
    assert "$(call install_lock,$(LOCK_RUNTIME),$(LOCK_TEST))" in makefile
