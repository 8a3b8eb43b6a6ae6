"""The web playground (/ui) in real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
submit an image and watch it finish, cancel a long job, see the server's error, the history and admin views;
server data shown as text (no script runs from it) under the server's Content-Security-Policy, which every
test here runs under (a CSP violation in the console fails it). A screenshot of each view is written under the
test's temp dir."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect, sync_playwright

from . import web
from .jobs_helpers import Jobs
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
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("dialog", lambda d: (violations.append(f"dialog: {d.message}"), d.dismiss()))
    page.goto(f"{jobs_server.url}/")  # redirects to /ui/
    page.fill("#key", admin_key)
    page.dispatch_event("#key", "change")
    expect(page.locator("#model option")).not_to_have_count(0)
    page.violations = violations
    yield page
    context.close()
    if not getattr(page, "violations_expected", False):
        assert violations == []  # the playground works under its CSP: nothing it does is blocked


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
    # the list comes from the server, which shares CI's two cores with the rest of the suite: a generous wait
    expect(page.locator("#history tbody tr").first).to_be_visible(timeout=30_000)
    expect(page.locator("#history tbody")).to_contain_text("a lighthouse at dusk", timeout=30_000)
    page.screenshot(path=str(tmp_path / "history.png"), full_page=True)
    page.click("button[data-view=admin]")
    expect(page.locator("#workers tbody")).to_contain_text("worker-0")
    expect(page.locator("#workers tbody")).to_contain_text("cpu")
    expect(page.locator("#models tbody")).to_contain_text("tiny-sdxl")
    expect(page.locator("#queue")).to_contain_text("worker(s)")
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)


XSS = "<img/src/onerror=window.__xss=1>"  # the form: no space, so only the id rule refuses it


def test_server_data_is_shown_as_text_and_runs_no_script(page, jobs_server, admin_key, tmp_path):
    """A model id like `<img/src/onerror=...>` is refused at registration; data that still reaches the page
    (a prompt in the history; a hostile model id and worker model, as a models file from before the id rule
    would list them) is shown as text: no element is made from it, no script runs."""
    r = web.post(f"{jobs_server.url}/api/v1/enterprise/load_model",
                 json={"key": admin_key, "url": "org/model", "model_id": XSS}, timeout=30)
    assert r.status_code == 400 and "model_id: an id may hold only" in r.json()["message"], r.text
    models = web.post(f"{jobs_server.url}/api/v1/enterprise/get_all_models", json={"key": admin_key}, timeout=30)
    assert XSS not in models.json()["models"]

    jobs = Jobs(jobs_server, admin_key)
    jobs.done(jobs.submit(prompt=XSS, model_id="tiny-sd", steps=2)["id"])

    def with_hostile_model(route):  # the server's real answer, plus the entry a stale models file could hold
        answer = route.fetch()
        body = answer.json()
        body["data"].append({**body["data"][0], "id": XSS, "description": XSS, "default": False})
        route.fulfill(response=answer, body=json.dumps(body))

    def with_hostile_worker(route):
        answer = route.fetch()
        body = answer.json()
        body["workers"][0]["models"].append(XSS)
        body["models_loaded"].append(XSS)
        route.fulfill(response=answer, body=json.dumps(body))

    page.route("**/v1/models", with_hostile_model)
    page.route("**/api/v1/enterprise/system_details", with_hostile_worker)
    page.reload()
    expect(page.locator("#model option")).to_have_count(len(models.json()["models"]) + 1)
    page.select_option("#model", XSS)
    expect(page.locator("#model-info")).to_contain_text(XSS)
    page.click("button[data-view=history]")
    expect(page.locator("#history tbody")).to_contain_text(XSS)  # the prompt, as text
    page.click("button[data-view=admin]")
    expect(page.locator("#models tbody")).to_contain_text(XSS)
    expect(page.locator("#workers tbody")).to_contain_text(XSS)
    expect(page.locator("#queue")).to_contain_text(XSS)
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("img[onerror]").count() == 0  # no element was made from the data
    page.screenshot(path=str(tmp_path / "admin-hostile.png"), full_page=True)

    # and the CSP holds even if markup did get in: an inline handler is refused by the browser
    page.violations_expected = True
    page.evaluate(f"() => document.body.insertAdjacentHTML('beforeend', {json.dumps(XSS)})")
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__xss") is None
    assert any("Content Security Policy" in v for v in page.violations), page.violations


def test_the_first_visit_says_how_to_get_a_key(browser, jobs_server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{jobs_server.url}/ui/")
    help_box = page.locator("#key-help")
    expect(help_box).to_be_visible()
    expect(help_box).to_contain_text("diffserve keys create --name me")
    page.fill("#key", "anything")
    page.dispatch_event("#key", "change")
    expect(help_box).to_be_hidden()
    context.close()


def test_the_form_starts_at_the_chosen_models_defaults(page):
    from diffserve.engine.demo import DEMO_SD_LIMITS

    page.select_option("#model", "demo-sd")
    page.dispatch_event("#model", "change")
    for field, value in (("#strength", DEMO_SD_LIMITS.default_strength), ("#steps", DEMO_SD_LIMITS.default_steps),
                         ("#guidance_scale", DEMO_SD_LIMITS.default_guidance)):
        assert float(page.input_value(field)) == value, field


def test_history_shows_the_whole_prompt(page, jobs_server, admin_key, tmp_path):
    prompt = "sketch " + " ".join(f"word{i}" for i in range(30)) + " the-last-word"
    Jobs(jobs_server, admin_key).submit(prompt=prompt, steps=2)
    page.click("button[data-view=history]")
    page.click("#refresh-history")
    expect(page.locator("#history .prompt").first).to_have_text(prompt)
