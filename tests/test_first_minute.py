"""A new user's first minute on the command line: `serve` says what to do next, `generate --help` explains
every option with its default and takes `--key`, `models add --family` is kept, `jobs list` elides at a word."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffserve.engine.demo import DEMO_SD_LIMITS

from . import web
from .jobs_helpers import data_uri
from .servers import free_port, png_bytes

ROOT = Path(__file__).resolve().parent.parent


def diffserve(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFSERVE_")}
    return subprocess.run([sys.executable, "-m", "diffserve.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=120, **kw)


def test_serve_prints_the_url_the_playground_and_how_to_make_a_key(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFSERVE_")}
    proc = subprocess.Popen([sys.executable, "-m", "diffserve.cli.main", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path / "data"), "--workers", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(5)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "".join(lines)
    assert f"http://127.0.0.1:{port}/ui/" in text
    assert f"diffserve keys create --name me --data-dir {tmp_path / 'data'}" in text
    assert "no key exists yet" in text
    assert "--prompt sketch" in text  # an edit word demo-sd knows, not a prompt that gives noise


def test_generate_help_describes_every_option_with_its_default():
    out = diffserve("generate", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    options = re.findall(r"^\s+(--[a-z-]+|-o)", out.stdout, re.M)
    assert "--key" in options and "--prompt" in options
    for option in ("--negative-prompt", "--model", "--strength", "--steps", "--guidance", "--seed", "--samples",
                   "--width", "--height", "--scheduler", "--server", "--key"):
        described = text.split(option, 2)[-1][:160]  # the help after the option's own line
        assert "default" in described or "env" in described, (option, described)
    # the defaults it quotes for the built-in model are the model's own
    assert f"demo-sd: {DEMO_SD_LIMITS.default_strength}" in text
    assert f"demo-sd: {DEMO_SD_LIMITS.default_steps}" in text
    assert f"demo-sd: {DEMO_SD_LIMITS.default_guidance}" in text


def test_generate_takes_the_key_as_a_flag(jobs_server, tmp_path):
    key = jobs_server.create_key("--name", "first-minute")
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(64, 64))
    out = tmp_path / "sketch.png"
    done = diffserve("generate", str(photo), "--prompt", "sketch", "--key", key, "--server", jobs_server.url,
                     "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = diffserve("generate", str(photo), "--prompt", "sketch", "--server", jobs_server.url)
    assert missing.returncode == 1 and "--key" in missing.stderr


def test_jobs_list_elides_a_long_prompt_at_a_word(jobs_server):
    key = jobs_server.create_key("--name", "history")
    words = ["sketch"] + [f"word{i}" for i in range(40)]
    r = web.post(f"{jobs_server.url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                 json={"prompt": " ".join(words), "init_image": data_uri(64, 64), "steps": 2})
    assert r.status_code in (200, 201, 202), r.text
    listed = diffserve("jobs", "list", "--key", key, "--server", jobs_server.url)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if "sketch word0" in line)
    shown = line.split("sketch", 1)[1].removesuffix(" ...").split()
    assert line.endswith(" ...") and all(w in words for w in shown), line  # whole words, then the ellipsis


def test_models_add_keeps_the_family(tmp_path):
    done = diffserve("models", "add", "realistic", "--hub", "SG161222/Realistic_Vision_V5.1_noVAE", "--family",
                     "sd", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    entry = json.loads((tmp_path / "models.json").read_text())["models"]["realistic"]
    assert entry == {"kind": "hub", "location": "SG161222/Realistic_Vision_V5.1_noVAE", "family": "sd"}


@pytest.mark.parametrize("family", ["sdxl"])
def test_models_add_keeps_another_family_too(tmp_path, family):
    done = diffserve("models", "add", "x", "--hub", "org/x", "--family", family, "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "models.json").read_text())["models"]["x"]["family"] == family
