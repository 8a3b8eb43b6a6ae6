"""The command-line client of a running server: `diffserve generate` and `diffserve jobs`.

It speaks the native job API (/v1/jobs) with DIFFSERVE_API_KEY as a Bearer key, follows a job's
server-sent events with a Rich progress bar, and cancels the job on the server when interrupted (Ctrl-C).
Every failure is one line on stderr and a non-zero exit: 1 for what the server refused or could not do,
2 for usage, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from textwrap import shorten
from typing import Any, Iterator

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ClientError(Exception):
    """A one-line reason to show the user."""


class Client:
    def __init__(self, server: str, key: str | None, timeout: float = 30.0) -> None:
        if not key:
            raise ClientError("no API key: pass --key or set DIFFSERVE_API_KEY "
                              "(`diffserve keys create --name me` prints one)")
        self.server = server.rstrip("/")
        self.http = httpx.Client(base_url=self.server, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.ConnectError:
            raise ClientError(f"cannot reach the server at {self.server} (is `diffserve serve` running?)") from None
        except httpx.HTTPError as e:
            raise ClientError(f"{self.server}: {e}") from None
        return _answer(r)

    def events(self, job_id: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) of the job's events stream until it ends."""
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(30, read=None)) as r:
                if r.status_code != 200:
                    r.read()
                    _answer(r)
                event = None
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event:
                        yield event, json.loads(line[5:])
        except httpx.ConnectError:
            raise ClientError(f"cannot reach the server at {self.server}") from None

    def download(self, url: str) -> bytes:
        r = httpx.get(url, timeout=60)  # output URLs are unguessable and public, like the vendors'
        if r.status_code != 200:
            raise ClientError(f"could not download {url}: HTTP {r.status_code}")
        return r.content


def _answer(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        body = {}
    if r.status_code >= 400:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        raise ClientError(f"server said ({r.status_code}): {message or r.text[:200] or r.reason_phrase}")
    return body


def _image_value(image: str) -> str:
    if image.startswith(("http://", "https://", "data:")):
        return image
    path = Path(image)
    if not path.is_file():
        raise ClientError(f"no such image file: {image}")
    return base64.b64encode(path.read_bytes()).decode()


def generate(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    client = Client(args.server, args.key)
    body = {"prompt": args.prompt, "init_image": _image_value(args.image)}
    for field in ("negative_prompt", "strength", "steps", "seed", "samples", "width", "height", "guidance_scale",
                  "scheduler"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    if args.model:
        body["model_id"] = args.model
    job = client.call("POST", "/v1/jobs", json=body)
    print(f"job {job['id']} queued", file=sys.stderr)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("queued", total=job["progress"]["total"] or None)
            for event, data in client.events(job["id"]):
                bar.update(task, description=event, completed=data["progress"]["step"],
                           total=data["progress"]["total"] or None)
                job = data
    except KeyboardInterrupt:
        client.call("POST", f"/v1/jobs/{job['id']}/cancel")
        print(f"job {job['id']} cancelled", file=sys.stderr)
        return 130
    if job["status"] != "succeeded":
        raise ClientError(f"job {job['id']} {job['status']}: {job.get('error') or 'no reason given'}")
    out = Path(args.output)
    written = []
    for i, url in enumerate(job["outputs"]):
        path = out if len(job["outputs"]) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        path.write_bytes(client.download(url))
        written.append(str(path))
    print(f"job {job['id']} succeeded (seed {job['meta']['seed']}): {', '.join(written)}")
    return 0


def jobs_list(args: argparse.Namespace) -> int:
    client = Client(args.server, args.key)
    for job in client.call("GET", "/v1/jobs", params={"limit": args.limit})["data"]:
        step = job["progress"]
        print(f"{job['id']:>6}  {job['status']:<10} {step['step']:>3}/{step['total']:<3} {job['dialect']:<10} "
              f"{job['model_id']:<16} {job['created_at']}  {shorten(job['meta']['prompt'] or '', 60, placeholder=' ...')}")
    return 0


def jobs_show(args: argparse.Namespace) -> int:
    client = Client(args.server, args.key)
    print(json.dumps(client.call("GET", f"/v1/jobs/{args.id}"), indent=2))
    return 0


def jobs_cancel(args: argparse.Namespace) -> int:
    client = Client(args.server, args.key)
    job = client.call("POST", f"/v1/jobs/{args.id}/cancel")
    print(f"job {job['id']}: {job['status']}")
    return 0


def run(func, args: argparse.Namespace) -> int:
    try:
        return func(args)
    except ClientError as e:
        print(f"diffserve: {e}", file=sys.stderr)
        return 1


MODEL_DEFAULT = "default: the model's own (demo-sd: %s)"


def add_client_commands(sub: Any) -> None:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--server", default=os.environ.get("DIFFSERVE_SERVER", DEFAULT_SERVER),
                        help=f"the server (env DIFFSERVE_SERVER, default {DEFAULT_SERVER})")
    server.add_argument("--key", default=os.environ.get("DIFFSERVE_API_KEY"),
                        help="API key (env DIFFSERVE_API_KEY; `diffserve keys create --name me` prints one)")

    gen = sub.add_parser(
        "generate", parents=[server], help="image to image on a running server",
        description="Image to image on a running server: uploads IMAGE, follows the job with a progress bar and "
                    "writes the result. On the built-in demo-sd, the prompt is an edit word: grayscale, sepia, "
                    "invert, blur, sharpen, sketch, warm, cool, posterize.",
        epilog="example: diffserve generate docs/images/demo-input.jpg --prompt sketch -o sketch.png")
    gen.add_argument("image", help="input image: a file, an http(s) URL or a data: URI")
    gen.add_argument("--prompt", required=True, help="what to make of the image (demo-sd: an edit word, e.g. sketch)")
    gen.add_argument("--negative-prompt", dest="negative_prompt", help="what to steer away from (default: none)")
    gen.add_argument("--model", help="model id (default: the server's default model, demo-sd out of the box)")
    gen.add_argument("--strength", type=float,
                     help="how much of the image to change, 0-1 (" + MODEL_DEFAULT % "0.3" + ")")
    gen.add_argument("--steps", type=int, help="denoising steps (" + MODEL_DEFAULT % "8" + ")")
    gen.add_argument("--guidance", dest="guidance_scale", type=float,
                     help="classifier-free guidance scale (" + MODEL_DEFAULT % "1.0" + ")")
    gen.add_argument("--seed", type=int, help="random seed, for a repeatable image (default: a random one)")
    gen.add_argument("--samples", type=int, help="images to make (default 1)")
    gen.add_argument("--width", type=int, help="output width in pixels (default: the input's, fitted to the model)")
    gen.add_argument("--height", type=int, help="output height in pixels (default: the input's, fitted to the model)")
    gen.add_argument("--scheduler", help="sampler, e.g. EulerDiscreteScheduler (default: the model's own)")
    gen.add_argument("-o", "--output", default="out.png", help="where to write the image (several: out-0.png...)")
    gen.set_defaults(func=lambda args: run(generate, args))

    jobs = sub.add_parser("jobs", help="this key's jobs on a running server").add_subparsers(dest="jobs_command")
    listing = jobs.add_parser("list", parents=[server], help="recent jobs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=lambda args: run(jobs_list, args))
    show = jobs.add_parser("show", parents=[server], help="one job as JSON")
    show.add_argument("id")
    show.set_defaults(func=lambda args: run(jobs_show, args))
    cancel = jobs.add_parser("cancel", parents=[server], help="cancel a job")
    cancel.add_argument("id")
    cancel.set_defaults(func=lambda args: run(jobs_cancel, args))
