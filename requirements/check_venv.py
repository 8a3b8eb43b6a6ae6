"""Check that this interpreter's environment is exactly what a lock file says.

Usage: python requirements/check_venv.py requirements/runtime.txt [requirements/test.txt ...]

The lock is universal (one file for every supported Python, made by `uv pip compile --universal`): a line
whose environment marker does not hold for this interpreter (`async-timeout ... ; python_full_version <
'3.11.3'`) is not expected here. Given several locks, the venv may equal any one of them (`make serve` after
`make test` runs in the test venv, a superset of the runtime lock at the same versions); the problems printed
are those against the first lock.

Fails (exit 1, each problem on a line) when
* a distribution the lock pins is missing or has another version;
* a distribution is installed that the lock does not name -- except the project itself, pip, and torch with
  the packages a CUDA build of torch brings (torch is chosen at install time: Makefile TORCH=);
* `pip check` reports anything not listed in requirements/pip-check-allow.txt.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker

HERE = Path(__file__).resolve().parent
# Installed beside the lock on purpose: the project (editable), the installer, and the torch build.
NOT_LOCKED = re.compile(r"^(diffserve|pip|torch|triton|nvidia-.*|cuda-.*)$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]*?))?\s*\\?$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match and (match.group(3) is None or Marker(match.group(3)).evaluate()):
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}


def allowed_pip_check_lines() -> set[str]:
    lines = (HERE / "pip-check-allow.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def problems(lock: Path) -> list[str]:
    found = []
    pins, installed = locked_versions(lock), installed_versions()
    for name, version in sorted(pins.items()):
        if name not in installed:
            found.append(f"{name}=={version} is in {lock.name} but not installed")
        elif installed[name] != version:
            found.append(f"{name} {installed[name]} is installed, {lock.name} pins {version}")
    for name, version in sorted(installed.items()):
        if name not in pins and not NOT_LOCKED.match(name):
            found.append(f"{name} {version} is installed but not in {lock.name}")
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    allowed = allowed_pip_check_lines()
    for line in check.stdout.splitlines():
        if line.strip() and line.strip() != "No broken requirements found." and line.strip() not in allowed:
            found.append(f"pip check: {line.strip()}")
    return found


def main() -> int:
    locks = [Path(arg) for arg in sys.argv[1:]]
    found = problems(locks[0])
    if found and any(not problems(other) for other in locks[1:]):
        return 0
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
