"""Models through the API: load (register + warm up), verify, delete, reload, and VAEs.

`load_model` takes a Hugging Face repo id (`org/name`), a local path (a diffusers folder or one checkpoint
file) or an http(s) URL of a checkpoint (downloaded under `<models_dir>/downloads/<model_id>/`); any other
URL scheme (file://, gopher://...) is refused, and ids follow the registry's rule (registry_file.py). The model is
written to the models file through the registry's write API, then a one-step warm-up generation is
queued: a worker loads the model (and keeps it; the load balancer then prefers that worker) and the
request's `webhook` is called when the warm-up ends, success or failure. A load that fails (download,
registration or warm-up) leaves no entry behind: the entry and its downloaded files are removed, and
`verify_model` reports it failed. `verify_model` reports the state: downloading, loading, loaded (held by a
worker), ready (registered, not held now) or failed.
LoRAs and embeddings (`model_type` lora / embeddings) are registered as assets, without a warm-up.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image

from diffserve.management.server import ServerAdmin
from diffserve.config import Settings
from diffserve.core.errors import InvalidInput, ModelNotFound
from diffserve.core.job import JobStatus
from diffserve.core.request import ModelLimits, RequestDraft
from diffserve.engine.models.sources import SINGLE_FILE_SUFFIXES
from diffserve.engine.models.registry import ModelEntry, ModelRegistry
from diffserve.engine.models.registry_file import check_entry_id
from diffserve.engine.models.specs import FAMILIES
from diffserve.media.fetch import check_url
from diffserve.service.submit import GenerationService
from diffserve.store.control import REGISTER_MODEL, UNREGISTER_MODEL
from diffserve.store.keys import ApiKey
from diffserve.store.workers import WorkerStore

log = logging.getLogger(__name__)

MODEL_TYPES = ("huggingface", "api_trained", "custom_ckpt", "lora", "embeddings", "controlnet")
ASSET_SECTION = {"lora": "loras", "embeddings": "embeddings"}
CATEGORY_FAMILY = {"stable_diffusion": "sd", "stable_diffusion_xl": "sdxl", "sdxl": "sdxl", "flux": "flux",
                   "sd": "sd"}
PIPELINE_FAMILY = {"StableDiffusionPipeline": "sd", "StableDiffusionImg2ImgPipeline": "sd",
                   "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
                   "FluxPipeline": "flux", "FluxImg2ImgPipeline": "flux"}
PRECISIONS = ("fp16", "fp32")  # ModelsLab's `revision` values: a precision, not a git revision
MAX_REDIRECTS = 5
DOWNLOAD_TIMEOUT_S = 3600.0
WARM_UP_WAIT_S = 3600.0  # how long a load's warm-up is watched; a failure within it removes the entry
# A Hugging Face repo id: `name` or `org/name`, letters, digits, '.', '_', '-' (the hub's own rule, 96 each)
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


@dataclass
class LoadSpec:
    """A load_model request, normalised (see api/management/protocol.py)."""

    model_id: str
    url: str
    model_type: str = "huggingface"
    from_safetensors: bool = False
    revision: str | None = None
    webhook: str | None = None
    family: str | None = None
    config: str | None = None  # local diffusers config folder for a single checkpoint file (offline loading)


@dataclass
class LoadState:
    state: str  # downloading | registered | failed
    error: str | None = None
    job_id: int | None = None


@dataclass
class ModelAdmin:
    settings: Settings
    registry: ModelRegistry
    service: GenerationService
    workers: WorkerStore
    server: ServerAdmin
    loads: dict[str, LoadState] = field(default_factory=dict)
    _tasks: set[asyncio.Task] = field(default_factory=set)

    # ---- load ------------------------------------------------------------------------------

    async def load_model(self, key: ApiKey, spec: LoadSpec) -> dict[str, Any]:
        if spec.model_type == "controlnet":
            raise InvalidInput("model_type controlnet is not supported by this server", field="model_type")
        _check_id(spec.model_id, "model_id")
        section = ASSET_SECTION.get(spec.model_type)
        if _is_http(spec.url):
            self._check_new(spec.model_id, section)
            await self.service.offload(
                lambda: check_url(spec.url, allow_private=self.settings.allow_private_urls, field="url"))
            self.loads[spec.model_id] = LoadState("downloading")
            self._start(self._download_and_register(key, spec, section))
            return {"status": "success", "message": "model load started", "model_id": spec.model_id,
                    "model_status": "downloading"}
        path = _local_path(spec.url, "url")
        if path is None:
            _check_hub_id(spec.url, "url")
        job_id = await self._register(key, spec, section, path)
        return {"status": "success", "message": "model load started", "model_id": spec.model_id,
                "model_status": "loading" if job_id else "ready", "load_request_id": job_id}

    def _start(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)  # a reference, so the task is not collected while it runs
        task.add_done_callback(self._tasks.discard)

    def _check_new(self, model_id: str, section: str | None) -> None:
        exists = (section is None and model_id in self.registry.ids()) or \
                 (section is not None and any(i == model_id for i, _ in self.registry.entries(section)))
        if exists:
            raise InvalidInput(f"model_id: {model_id} already exists", field="model_id")

    async def _download_and_register(self, key: ApiKey, spec: LoadSpec, section: str | None) -> None:
        downloads = self.download_dir(spec.model_id)
        try:
            path = await self.service.offload(self._download, spec.url, downloads)
            await self._register(key, spec, section, path)
        except Exception as e:  # recorded for verify_model; the log has the details
            reason = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            log.warning("load_model %s failed: %s", spec.model_id, reason)
            self.loads[spec.model_id] = LoadState("failed", error=reason)
            await self.service.offload(lambda: shutil.rmtree(downloads, ignore_errors=True))

    async def _register(self, key: ApiKey, spec: LoadSpec, section: str | None, path: Path | None) -> int | None:
        """Add the entry and (for a model) queue its warm-up; on any failure the entry is removed again."""
        added = False
        try:
            if section is not None:
                entry = _asset_entry(spec, path)
                await self.service.offload(lambda: self.registry.add_asset(section, spec.model_id, entry))
                added = True
                await self._share(section, spec.model_id, entry, path)
                self.loads[spec.model_id] = LoadState("registered")
                return None
            spec_entry = _model_entry(spec, path)
            model = await self.service.offload(lambda: self.registry.add_model(spec.model_id, spec_entry))
            added = True
            self.server.drop_models([spec.model_id])  # a worker may hold an older model of that id
            await self._share("models", spec.model_id, spec_entry, path)  # before the warm-up job: workers know it
            job = await self.service.submit(key, "load_model",
                                            warm_up_draft(spec.model_id, model.limits, spec.webhook),
                                            {"load_model": spec.model_id, "init_image": "base64"})
        except Exception:
            if added:
                await self._forget(section or "models", spec.model_id)
            raise
        self.loads[spec.model_id] = LoadState("registered", job_id=job.id)
        self._start(self._watch_warm_up(spec.model_id, job.id))
        return job.id

    async def _watch_warm_up(self, model_id: str, job_id: int) -> None:
        """A warm-up that fails (the weights do not load) removes the model again; verify_model says why."""
        try:
            job = await self.service.wait(job_id, WARM_UP_WAIT_S)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                return
            current = self.loads.get(model_id)
            if current is None or current.job_id != job_id:  # deleted or loaded again meanwhile
                return
            log.warning("load_model %s failed in its warm-up: %s", model_id, job.error)
            self.loads[model_id] = LoadState("failed", error=job.error or job.status.value, job_id=job_id)
            await self._forget("models", model_id)
        except Exception:  # noqa: BLE001 - a watcher never takes the API down; the log has it
            log.exception("watching the warm-up of %s failed", model_id)

    async def _forget(self, section: str, entry_id: str) -> None:
        """Remove an entry this process added (a load that failed), from the file and from the fleet."""
        def remove() -> None:
            try:
                if section == "models":
                    self.registry.remove_model(entry_id)
                else:
                    self.registry.remove_asset(section, entry_id)
            except (ModelNotFound, InvalidInput):
                return  # already gone
            self.server.control.post(UNREGISTER_MODEL, {"section": section, "id": entry_id})
            if section == "models":
                self.server.drop_models([entry_id])

        await self.service.offload(remove)
        downloads = self.download_dir(entry_id)
        await self.service.offload(lambda: shutil.rmtree(downloads, ignore_errors=True))

    def download_dir(self, model_id: str) -> Path:
        return self.settings.models_dir / "downloads" / model_id

    async def _share(self, section: str, entry_id: str, entry: dict[str, Any], path: Path | None) -> None:
        """Every other process of the fleet registers it too (engine/models/registrations.py). Weights this
        process downloaded go to the shared storage when workers may be on other machines (the celery queue)."""
        obj = None
        if path is not None and path.is_file() and self.settings.queue.backend == "celery" \
                and path.is_relative_to(self.download_dir(entry_id)):
            obj = f"models/{entry_id}/{path.name}"
            await self.service.offload(lambda: self.service.storage.put(obj, path.read_bytes(),
                                                                        "application/octet-stream"))
        payload = {"section": section, "id": entry_id, "entry": entry, "object": obj}
        await self.service.offload(lambda: self.server.control.post(REGISTER_MODEL, payload))

    def _download(self, url: str, dest_dir: Path, field: str = "url") -> Path:
        """Stream `url` to `dest_dir/<file name>` (each redirect checked against the URL rules)."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        with httpx.Client(timeout=httpx.Timeout(60.0, read=DOWNLOAD_TIMEOUT_S), follow_redirects=False) as http:
            for _ in range(MAX_REDIRECTS + 1):
                check_url(url, allow_private=self.settings.allow_private_urls, field=field)
                with http.stream("GET", url) as response:
                    if response.is_redirect:
                        url = str(response.url.join(response.headers.get("location", "")))
                        continue
                    if response.status_code != 200:
                        raise InvalidInput(f"{field}: download failed (HTTP {response.status_code})", field=field)
                    target = dest_dir / _file_name(response, url)
                    with tempfile.NamedTemporaryFile(dir=dest_dir, prefix=".tmp-", delete=False) as f:
                        for chunk in response.iter_bytes(1 << 20):
                            f.write(chunk)
                    Path(f.name).replace(target)
                    return target
        raise InvalidInput(f"{field}: more than {MAX_REDIRECTS} redirects", field=field)

    # ---- inspect / remove ------------------------------------------------------------------

    def verify(self, model_id: str) -> dict[str, Any]:
        load = self.loads.get(model_id)
        if load and load.state == "downloading":
            return _verified(model_id, "downloading", "The model is downloading")
        if load and load.state == "failed":
            return {"status": "error", "model_id": model_id, "model_status": "failed",
                    "message": f"Model {model_id} could not be loaded: {load.error}"}
        entry = self.registry.get(model_id)  # ModelNotFound -> "Model not found: <id>"
        held_by = [w.worker_id for w in self.workers.live() if model_id in w.models]
        job = self.service.jobs.get(load.job_id) if load and load.job_id else None
        if job is not None and job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            return {"status": "error", "model_id": model_id, "model_status": "failed",
                    "message": f"Model {model_id} could not be loaded: {job.error}"}
        if held_by:
            state, message = "loaded", f"The model is loaded on {', '.join(held_by)}"
        elif job is not None and not job.status.is_terminal():
            state, message = "loading", "The model is loading"
        else:
            state, message = "ready", "The model exists; a worker loads it on its next request"
        return {**_verified(model_id, state, message), "family": entry.family, "source": entry.kind,
                "workers": held_by}

    def all_models(self) -> list[dict[str, Any]]:
        held = {m for w in self.workers.live() for m in w.models}
        return [{"model_id": model_id, "family": entry.family, "source": entry.kind,
                 "builtin": self.registry.is_builtin("models", model_id), "loaded": model_id in held,
                 "description": entry.description}
                for model_id, entry in self.registry.items()]

    def delete(self, model_id: str) -> None:
        self.registry.remove_model(model_id)  # ModelNotFound / built in -> InvalidInput
        self.server.control.post(UNREGISTER_MODEL, {"section": "models", "id": model_id})  # the whole fleet
        self.server.drop_models([model_id])
        self.loads.pop(model_id, None)
        downloads = self.download_dir(model_id)
        if downloads.is_dir():
            shutil.rmtree(downloads, ignore_errors=True)

    def reload(self, model_id: str) -> None:
        self.registry.get(model_id)
        self.server.drop_models([model_id])

    async def load_vae(self, vae_id: str, vae_url: str, vae_type: str, config: str | None) -> dict[str, Any]:
        _check_id(vae_id, "vae_id")
        if _is_http(vae_url):
            if vae_type == "diffusers":
                raise InvalidInput("vae_url: a diffusers VAE is a hub repo id or a local folder, not a URL",
                                   field="vae_url")
            path = await self.service.offload(self._download, vae_url, self.download_dir(vae_id), "vae_url")
            entry: dict[str, Any] = {"kind": "file", "location": str(path)}
        elif (path := _local_path(vae_url, "vae_url")) is not None:
            entry = {"kind": "folder" if path.is_dir() else "file", "location": str(path)}
        elif vae_type == "diffusers":
            _check_hub_id(vae_url, "vae_url")
            entry = {"kind": "hub", "location": vae_url}
        else:
            raise InvalidInput(f"vae_url: {vae_url!r} is neither an http(s) URL nor a local file", field="vae_url")
        if config and entry["kind"] == "file":
            entry["config"] = config
        await self.service.offload(lambda: self.registry.add_asset("vaes", vae_id, entry))
        await self._share("vaes", vae_id, entry, path if _is_http(vae_url) else None)
        return {"status": "success", "message": "VAE loaded", "vae_id": vae_id}


def warm_up_draft(model_id: str, limits: ModelLimits, webhook: str | None) -> RequestDraft:
    """The cheapest real generation the model accepts: smallest size, fewest steps, one image."""
    m = limits.size_multiple
    side = -(-limits.min_size // m) * m
    return RequestDraft(model_id=model_id, prompt="model load check", init_image=_blank_png(side),
                        width=side, height=side, samples=1, steps=limits.min_steps, strength=1.0,
                        safety_checker=False, webhook=webhook, track_id=model_id)


def _family_limits(family: str) -> ModelLimits:
    """A real model's limits from its family's spec (an unknown family is refused by the entry's check)."""
    return next((f.limits for f in FAMILIES if f.name == family), ModelLimits())


def _model_entry(spec: LoadSpec, path: Path | None) -> dict[str, Any]:
    single = path is not None and path.is_file()
    if path is None:
        kind, location = "hub", spec.url
    else:
        kind, location = ("single_file" if single else "folder"), str(path)
    if spec.from_safetensors and kind == "folder":
        raise InvalidInput("url: from_safetensors needs a checkpoint file, got a folder", field="url")
    family = spec.family or (_folder_family(path) if kind == "folder" else None) or "sd"
    entry: dict[str, Any] = {"kind": kind, "location": location, "family": family,
                             "limits": _family_limits(family).model_dump(),
                             "description": _described(kind, spec.url)}
    if kind == "hub" and spec.revision and spec.revision not in PRECISIONS:
        entry["revision"] = spec.revision
    if kind == "single_file" and spec.config:
        entry["config"] = spec.config
    ModelEntry.model_validate(entry)
    return entry


def _asset_entry(spec: LoadSpec, path: Path | None) -> dict[str, Any]:
    if path is None:
        entry = {"kind": "hub", "location": spec.url}
        if spec.revision and spec.revision not in PRECISIONS:
            entry["revision"] = spec.revision
        return entry
    return {"kind": "file" if path.is_file() else "folder", "location": str(path)}


def _folder_family(path: Path) -> str | None:
    import json

    try:
        name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError):
        return None
    return PIPELINE_FAMILY.get(name)


def _verified(model_id: str, state: str, message: str) -> dict[str, Any]:
    return {"status": "success", "model_id": model_id, "model_status": state, "message": message}


def _described(kind: str, url: str) -> str:
    """Every key reads descriptions (/v1/models): a hub id is public, a path or a URL (tokens) may not be."""
    return f"loaded through the API from {url}" if kind == "hub" else "loaded through the API"


def _is_http(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def _check_id(entry_id: str, field: str) -> None:
    problem = check_entry_id(entry_id)
    if problem:
        raise InvalidInput(f"{field}: {problem} (got {entry_id!r})", field=field)


def _check_hub_id(url: str, field: str) -> None:
    """What is neither an http(s) URL nor a local path must be a hub repo id: no other URL scheme."""
    if HUB_ID.fullmatch(url) and ".." not in url and "--" not in url:
        return
    scheme = urlsplit(url).scheme if "://" in url or ":" in url else ""
    what = f"the URL scheme {scheme!r} is not accepted" if scheme else f"{url!r} is not a Hugging Face repo id"
    raise InvalidInput(f"{field}: {what}; give an http(s) URL, a Hugging Face repo id (org/name) or a local path",
                       field=field)


def _local_path(url: str, field: str) -> Path | None:
    """A local path (absolute, ./relative or ~), which must exist; None for anything else (a repo id)."""
    if not url.startswith(("/", "./", "../", "~")):
        return None
    path = Path(url).expanduser().resolve()
    if not path.exists():
        raise InvalidInput(f"{field}: no such file or folder: {url}", field=field)
    return path


def _file_name(response: httpx.Response, url: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    name = ""
    if "filename=" in disposition:
        name = disposition.split("filename=", 1)[1].split(";")[0].strip().strip('"')
    name = Path(unquote(name or urlsplit(url).path)).name or "model.safetensors"
    if not name.endswith(SINGLE_FILE_SUFFIXES):
        name += ".safetensors"
    return name


def _blank_png(side: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (128, 128, 128)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
