"""The venv the tests run in is exactly the lock (requirements/test.txt), and the lock honours pyproject.toml.

requirements/check_venv.py is what every `make` install runs; these tests run it on this venv and prove it
notices drift (a version that differs, a package the lock does not know, a pip check complaint not allowed).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "test.txt"
sys.path.insert(0, str(ROOT / "requirements"))
import check_venv  # noqa: E402  (a script beside the lock, not a package module)


def test_this_venv_is_exactly_the_lock():
    assert check_venv.problems(LOCK) == []


def test_the_checker_notices_a_version_that_drifted(tmp_path):
    lock = tmp_path / "lock.txt"
    numpy = metadata.version("numpy")
    lock.write_text(LOCK.read_text().replace(f"numpy=={numpy} ", "numpy==1.0.0 "))
    assert check_venv.problems(lock) == [f"numpy {numpy} is installed, lock.txt pins 1.0.0"]


def test_the_checker_notices_a_package_the_lock_does_not_name(tmp_path):
    lock = tmp_path / "lock.txt"
    lines = LOCK.read_text().splitlines()
    lines = [line for line in lines if not line.startswith("tomesd==")]
    lock.write_text("\n".join(lines))
    assert check_venv.problems(lock) == [f"tomesd {metadata.version('tomesd')} is installed but not in lock.txt"]


def test_pip_check_complains_only_of_the_listed_exception():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    assert out.strip().splitlines() == sorted(check_venv.allowed_pip_check_lines())
    assert "opencv-python-headless" in {d.metadata["Name"] for d in metadata.distributions()}
    assert "opencv-python" not in {d.metadata["Name"] for d in metadata.distributions()}


@pytest.mark.parametrize("lock_name", ["runtime.txt", "test.txt"])
def test_every_pyproject_range_is_met_by_the_lock(lock_name):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    if lock_name == "test.txt":
        wanted += project["optional-dependencies"]["test"]
    pins = check_venv.locked_versions(ROOT / "requirements" / lock_name)
    for spec in map(Requirement, wanted):
        name = check_venv.canonical(spec.name)
        if name == "torch":  # chosen at install time (Makefile TORCH=), not locked
            continue
        assert name in pins, f"{spec.name} is not in {lock_name}"
        assert spec.specifier.contains(pins[name], prereleases=True), f"{lock_name}: {name}=={pins[name]} vs {spec}"


def test_the_runtime_lock_is_a_subset_of_the_test_lock_at_the_same_versions():
    runtime = check_venv.locked_versions(ROOT / "requirements" / "runtime.txt")
    test = check_venv.locked_versions(LOCK)
    assert {name: test.get(name) for name in runtime} == runtime


def test_the_clip_vocabulary_came_from_the_wheel_without_the_package():
    from diffserve.engine.tiny.sd import clip_bpe_file

    assert clip_bpe_file() == Path(sys.prefix) / "share" / "diffserve" / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("open_clip_torch")
