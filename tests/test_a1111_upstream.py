"""AUTOMATIC1111's own API tests (tests/a1111_upstream/test/, vendored unchanged) against a real diffserve: a
pytest of their own in a subprocess, with only the base URL and the key (Basic auth, in the URL's user info) set.
Each of their tests is listed here: the ones diffserve passes, and the ones it fails with the reason.

Their tests assert the status code only. Some pass on that alone: `enable_hr` (no hires fix), `tiling`,
`restore_faces` (no face restorer) are accepted and ignored, and the "sd upscale" script is not run;
tests/test_a1111_more.py asserts what the answers hold for the endpoints it covers."""

from __future__ import annotations

import subprocess
import sys
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

UPSTREAM = Path(__file__).parent / "a1111_upstream"

# Each test A1111's test/ holds, and whether diffserve passes it (None) or why not.
EXPECTED = {
    "test_extras.py::test_simple_upscaling_performed": None,
    "test_extras.py::test_png_info_performed": None,
    "test_extras.py::test_interrogate_performed": None,
    "test_img2img.py::test_img2img_simple_performed": None,
    "test_img2img.py::test_inpainting_masked_performed": None,
    "test_img2img.py::test_inpainting_with_inverted_masked_performed": None,
    "test_img2img.py::test_img2img_sd_upscale_performed": None,
    "test_txt2img.py::test_txt2img_simple_performed": None,
    "test_txt2img.py::test_txt2img_with_negative_prompt_performed": None,
    "test_txt2img.py::test_txt2img_with_complex_prompt_performed": None,
    "test_txt2img.py::test_txt2img_not_square_image_performed": None,
    "test_txt2img.py::test_txt2img_with_hrfix_performed": None,
    "test_txt2img.py::test_txt2img_with_tiling_performed": None,
    "test_txt2img.py::test_txt2img_with_restore_faces_performed": None,
    "test_txt2img.py::test_txt2img_with_vanilla_sampler_performed[PLMS]": None,
    "test_txt2img.py::test_txt2img_with_vanilla_sampler_performed[DDIM]": None,
    "test_txt2img.py::test_txt2img_with_vanilla_sampler_performed[UniPC]": None,
    "test_txt2img.py::test_txt2img_multiple_batches_performed": None,
    "test_txt2img.py::test_txt2img_batch_performed": None,
    "test_utils.py::test_options_write": None,
    **{f"test_utils.py::test_get_api_url[sdapi/v1/{name}]": None for name in (
        "cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks", "face-restorers", "realesrgan-models",
        "prompt-styles", "embeddings")},
}


def run_upstream(base_url: str, tmp_path: Path) -> dict[str, str]:
    """Runs A1111's test/ against base_url: {test id: passed | failed | error | skipped}."""
    report = tmp_path / "a1111.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "base_url_plugin", "-p", "no:cacheprovider",
         "--confcutdir", str(UPSTREAM / "test"), "--rootdir", str(UPSTREAM / "test"), "-c", "/dev/null",
         "--base-url", base_url, f"--junitxml={report}", "-o", "timeout=120", str(UPSTREAM / "test")],
        cwd=UPSTREAM, env={**_env(), "PYTHONPATH": str(UPSTREAM)}, capture_output=True, text=True, timeout=900)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname').rsplit('.', 1)[-1]}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                          else "skipped" if "skipped" in kinds else "passed")
    return outcomes


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("DIFFSERVE_", "PYTEST_"))}


def test_automatic1111s_own_api_tests_pass(server, tmp_path):
    key = server.create_key("--name", "a1111-upstream")
    netloc = urllib.parse.urlsplit(server.url).netloc
    base_url = f"http://a1111:{urllib.parse.quote(key, safe='')}@{netloc}"
    outcomes = run_upstream(base_url, tmp_path)
    assert set(outcomes) == set(EXPECTED)  # every test of theirs ran, none is missing
    wrong = {name: (outcome, EXPECTED[name]) for name, outcome in outcomes.items()
             if (outcome == "passed") != (EXPECTED[name] is None)}
    passed = sum(outcome == "passed" for outcome in outcomes.values())
    assert not wrong, f"{passed}/{len(outcomes)} passed; unexpected: {wrong}"
    assert passed == sum(reason is None for reason in EXPECTED.values())
