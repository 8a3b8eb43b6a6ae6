"""The docs site builds and the README stays a front page (issue 29, item 5).

`mkdocs build --strict` (the `make docs` target, which CI runs) fails on any warning: a nav entry or a link to a
page that does not exist, a link to an anchor a page does not have, a link out of docs/. The README is held to
300 lines: everything else lives in docs/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = Path(sys.executable).with_name("mkdocs")  # the test lock's mkdocs, beside this interpreter


def _nav_pages(entries) -> list[str]:
    pages: list[str] = []
    for entry in entries:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_the_docs_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "performance" / "index.html").is_file()


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = ROOT / config["docs_dir"]
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), nav
    missing = [page for page in nav if not (docs / page).is_file()]
    assert not missing, f"in the nav but not in docs/: {missing}"
    left_out = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    assert sorted(set(left_out) - set(nav)) == [], "pages of docs/ missing from the nav"


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 300, f"README.md has {len(readme)} lines (at most 300: the rest belongs in docs/)"
