"""Draw docs/playground.png: the playground after one demo-sd job on the worked example's photo.

Run against a running server (`make serve` in another terminal, a key from `diffserve keys create`):

    .venv/bin/python scripts/playground_screenshot.py --key "$KEY" [--server http://127.0.0.1:8000]

Needs the test tools (Playwright) and Debian's chromium (`make test` installs both).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True)
    parser.add_argument("--prompt", default="sketch", help="one of demo-sd's edit words")
    parser.add_argument("--out", default=str(ROOT / "docs" / "playground.png"))
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_context(viewport={"width": 1000, "height": 900}).new_page()
        page.goto(f"{args.server}/ui/")
        page.fill("#key", args.key)
        page.dispatch_event("#key", "change")
        expect(page.locator("#model option")).not_to_have_count(0)
        page.select_option("#model", "demo-sd")
        page.dispatch_event("#model", "change")
        page.set_input_files("#file", str(ROOT / "docs" / "images" / "demo-input.jpg"))
        page.fill("#prompt", args.prompt)
        page.fill("#seed", "0")
        page.click("#submit")
        expect(page.locator("#run-status")).to_have_text("succeeded", timeout=120_000)
        page.wait_for_function("() => document.querySelector('#gallery img')?.naturalWidth > 0")
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
