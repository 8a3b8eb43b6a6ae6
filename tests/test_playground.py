"""The web playground (/ui) in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
submit an image and watch it finish, cancel a long job, see the server's error, the history and admin views.
A screenshot of each view is written under the test's temp dir."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect, sync_playwright

from .servers import png_bytes

CHROMIUM = "/usr/bin/chromium"
# as the machine's notes advise: no background networking (this machine's network is closed)
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def admin_key(jobs_server):
    return jobs_server.create_key("--admin", "--name", "playground")


@pytest.fixture
def page(browser, jobs_server, admin_key):
    context = browser.new_context(viewport={"width": 1100, "height": 1000})
    page = context.new_page()
    page.goto(f"{jobs_server.url}/")  # redirects to /ui/
    page.fill("#key", admin_key)
    page.dispatch_event("#key", "change")
    expect(page.locator("#model option")).not_to_have_count(0)
    yield page
    context.close()


def image_file(tmp_path, side: int):
    path = tmp_path / f"input-{side}.png"
    path.write_bytes(png_bytes(side, side))
    return path


def test_submit_watch_progress_and_see_the_image(page, tmp_path, jobs_server):
    assert page.url.endswith("/ui/")
    expect(page.locator("#model")).to_have_value("tiny-sd")
    expect(page.locator("#model-info")).to_contain_text("sd · 32–512 px")
    page.set_input_files("#file", str(image_file(tmp_path, 128)))
    expect(page.locator("#input-preview")).to_be_visible()
    page.fill("#prompt", "a lighthouse at dusk")
    page.fill("#steps", "30")
    page.fill("#strength", "1")
    page.click("#submit")
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#run-step")).to_contain_text("100%")
    assert page.eval_on_selector("#bar", "b => b.value === b.max")
    image = page.locator("#gallery img").first
    expect(image).to_be_visible()
    page.wait_for_function("() => document.querySelector('#gallery img').naturalWidth === 128")
    expect(page.locator("#meta")).to_contain_text("a lighthouse at dusk")
    page.select_option("#curl-dialect", "v6")
    expect(page.locator("#curl")).to_contain_text("/api/v6/images/img2img")
    page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)


def test_cancel_a_long_job(page, tmp_path):
    page.set_input_files("#file", str(image_file(tmp_path, 512)))
    page.fill("#prompt", "a slow one")
    page.fill("#steps", "50")
    page.fill("#strength", "1")
    page.select_option("#scheduler", "DDIMScheduler")
    page.click("#submit")
    expect(page.locator("#run-status")).to_have_text("running", timeout=60_000)
    page.wait_for_function("() => Number(document.querySelector('#bar').value) >= 1", timeout=60_000)
    page.click("#cancel")
    expect(page.locator("#run-status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#error")).to_contain_text("cancelled: Cancelled by the client")
    expect(page.locator("#step-preview")).to_be_visible()  # previews came while it ran
    page.screenshot(path=str(tmp_path / "cancelled.png"), full_page=True)


def test_a_bad_input_shows_the_servers_message(page, tmp_path):
    page.set_input_files("#file", str(image_file(tmp_path, 64)))
    page.fill("#prompt", "x")
    page.click("summary")  # the advanced panel
    page.fill("#enhance_style", "no-such-style")
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("enhance_style 'no-such-style' is not a known style")
    page.fill("#enhance_style", "")
    page.fill("#lora_models", "no-such-lora")
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("lora_model: LoRA not found: no-such-lora")
    page.fill("#lora_models", "")
    page.fill("#image-url", "")
    page.evaluate("() => { state.image = null; }")
    page.click("#submit")
    expect(page.locator("#error")).to_contain_text("init_image")


def test_history_and_admin_views(page, tmp_path):
    page.click("button[data-view=history]")
    expect(page.locator("#history tbody tr").first).to_be_visible()
    expect(page.locator("#history tbody")).to_contain_text("a lighthouse at dusk")
    page.screenshot(path=str(tmp_path / "history.png"), full_page=True)
    page.click("button[data-view=admin]")
    expect(page.locator("#workers tbody")).to_contain_text("worker-0")
    expect(page.locator("#workers tbody")).to_contain_text("cpu")
    expect(page.locator("#models tbody")).to_contain_text("tiny-sdxl")
    expect(page.locator("#queue")).to_contain_text("worker(s)")
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
