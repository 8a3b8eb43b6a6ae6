"""Settings, built once (environment + optional file) and passed down. No module-level instance."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class ImageLimits(BaseModel):
    """Bounds applied to every input image, whatever its source."""

    max_bytes: int = Field(20 * 1024 * 1024, description="largest encoded image accepted (bytes)")
    max_pixels: int = Field(4096 * 4096, description="largest decoded image accepted (width*height)")
    fetch_timeout_s: float = Field(15.0, description="total time allowed to fetch an image URL")
    max_redirects: int = 5
    max_fetches_in_flight: int = Field(
        16, ge=1, description="image URL fetches one API process runs at once (their own threads: a slow image "
                              "host costs a fetch slot, never the threads every other request uses)")
    max_fetches_per_key: int = Field(
        4, ge=1, description="image URL fetches one key may have in flight (running or waiting for a slot); "
                             "a submission past it is refused at once with 429")
    fetch_slot_wait_s: float = Field(
        5.0, ge=0, description="longest a submission waits for a free fetch slot (all in use) before it is "
                               "refused with 429")


class RequestLimits(BaseModel):
    """Bounds on what one request may ask for, checked before anything is queued."""

    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest JSON body accepted (bytes)")
    max_json_values: int = Field(
        100_000, ge=100, description="most separators and containers (`,` `[` `{`) one JSON body may hold, "
                                     "counted as it arrives: bounds the work of parsing it")
    max_form_fields: int = Field(64, ge=1, description="most text fields of a multipart body (OpenAI edits)")
    max_prompt_chars: int = Field(10_000, ge=1, description="longest prompt / negative_prompt (characters)")
    max_text_chars: int = Field(2048, ge=1, description="longest other text field (ids, track_id, webhook URL...)")
    max_batch_pixels: int = Field(
        4 * 1024 * 1024, ge=1, description="largest samples x width x height one request may generate"
    )
    max_queued_per_key: int = Field(
        10, ge=0, description="queued+running jobs one key may have (0: no cap); a key's own cap overrides it"
    )
    max_streams_per_key: int = Field(
        8, ge=1, description="event streams (/v1/jobs/{id}/events, OpenAI stream=true) one key may have open "
                             "in one API process; one more is refused with 429")
    max_sync_wait_s: float = Field(
        600.0, gt=0, description="longest a synchronous A1111 / OpenAI request waits for its job; past it the job "
                                 "is cancelled and the request answers 503")
    watch_interval_s: float = Field(
        0.2, gt=0, description="how often the API process reads the jobs its event streams and waiting "
                               "requests follow (one query for all of them)")
    max_reference_images: int = Field(
        16, ge=0, description="reference images one request may send besides its init image (Qolaba file_urls, "
                              "v7 init_image lists, OpenAI image[], native extra_images, A1111 init_images)"
    )


class ServerSettings(BaseModel):
    """Where the HTTP server listens, the base of the URLs it hands out, and how it treats slow clients (api/slow_clients.py): a connection that does not deliver its
    request in time is closed, so half-sent requests cannot hold connections and file descriptors."""

    header_timeout_s: float = Field(10.0, gt=0, description="time a request's headers may take to arrive (from "
                                                            "the connection, or the request's first byte)")
    body_timeout_s: float = Field(30.0, gt=0, description="longest pause between two pieces of a request body")
    keep_alive_s: float = Field(5.0, gt=0, description="how long an idle keep-alive connection stays open")
    max_connections: int = Field(
        1000, ge=1, description="open connections; one more closes the oldest that holds no request in progress "
                                "(lowered to stay 128 under the file-descriptor limit, ulimit -n)")

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        None, description="base URL clients use to reach this server (output, fetch and webhook URLs); unset: a "
                          "request's Host header if it names a trusted host, else the address the request "
                          "arrived at (never a Host header a client chose)"
    )
    trusted_hosts: list[str] = Field(
        ["localhost", "127.0.0.1", "::1"], description="host names whose Host header output URLs may follow when "
                                                       "public_url is unset (JSON list; a port is kept)")
    blocking_threads: int = Field(
        32, ge=1, description="threads the API process runs its blocking work on (store reads and writes, storage, "
                              "image decoding and encoding: core/offload.py); more wait for a free one")
    metrics_key_required: bool = Field(
        False, description="/metrics answers only with a valid API key (Authorization: Bearer <key>); off: open, "
                           "as Prometheus scrapes usually are -- turn it on when the port is reachable by others")


class WebhookSettings(BaseModel):
    """Delivery of job results to the request's `webhook` URL (see webhooks/)."""

    signing_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key for the webhook-signature header (whsec_<base64> or any text)"
    )
    max_attempts: int = Field(5, ge=1, description="POSTs per delivery before it is marked failed")
    backoff_initial_s: float = Field(5.0, ge=0, description="wait after the first failed attempt")
    backoff_factor: float = Field(3.0, ge=1, description="each later wait is this many times the previous")
    backoff_max_s: float = Field(600.0, ge=0, description="longest wait between two attempts")
    timeout_s: float = Field(30.0, gt=0, description="total time one attempt may take (the vendor's 30 s)")
    poll_interval_s: float = Field(0.5, gt=0, description="how often the dispatcher looks for due deliveries")
    concurrency: int = Field(32, ge=1, description="deliveries in flight at once (sender threads)")
    per_host_concurrency: int = Field(
        2, ge=1, description="deliveries in flight to one receiver host (the URL's host name), so a hanging "
                             "receiver holds at most this many senders")
    connect_timeout_s: float = Field(5.0, gt=0, description="longest wait to connect to a receiver")
    read_timeout_s: float = Field(10.0, gt=0, description="longest wait for the receiver's answer (between bytes)")


class StorageSettings(BaseModel):
    """Where outputs and inputs are stored. `update_s3` (saved in the database) overrides these."""

    backend: Literal["local", "s3"] = "local"
    bucket: str | None = None
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint; None for AWS")
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    prefix: str = Field("", description="key prefix inside the bucket (ModelsLab's image_directory)")
    public_url: str | None = Field(None, description="base URL objects are public under; None: presigned URLs")
    presign_expiry_s: int = Field(24 * 3600, ge=1, le=7 * 24 * 3600, description="lifetime of presigned URLs")
    refresh_s: float = Field(1.0, ge=0, description="how often API and workers re-read storage settings saved by update_s3")
    temp_ttl_s: float = Field(24 * 3600, gt=0, description="age after which `temp` outputs are deleted")
    cleanup_interval_s: float = Field(600.0, gt=0, description="how often expired temp objects are looked for")


class QueueSettings(BaseModel):
    """How jobs reach workers. `local`: a table in the store, wake-ups through pipes (one machine). `celery`: the
    same claims in the store, with Celery 5 messages on a Redis broker waking workers on any machine
    (jobqueue/celery.py; docs/fleet.md)."""

    backend: Literal["local", "celery"] = "local"
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis) for backend=celery")
    visibility_timeout_s: float = Field(
        3600.0, gt=0, description="an unacknowledged message is delivered again after this long (Redis "
                                  "transport); must exceed the longest job. A dead worker's job is re-run much "
                                  "sooner through its stale heartbeat (worker_stale_s)")
    resend_interval_s: float = Field(5.0, gt=0, description="how often the API compares the jobs waiting in the "
                                                            "store with the broker's messages and re-sends missing ones")
    broker_timeout_s: float = Field(2.0, gt=0, description="longest wait for the broker when sending; past it "
                                                           "the job stays queued in the store and is re-sent later")
    affinity_wait_s: float = Field(2.0, ge=0, description="how long a queued job waits for a worker that already "
                                                          "has its model loaded before any free worker takes it")


class BatchingSettings(BaseModel):
    """Step-level batching in each worker (workers/batcher.py): concurrent img2img requests that may share a
    denoising tick (core/batching.py) run one UNet / transformer forward per step together."""

    mode: Literal["on", "off"] = Field("on", description="on: batch what may share a tick; off: one job at a time")
    max_batch: int = Field(8, ge=1, description="most rows (samples; a request of 4 samples is 4) in one batch")
    max_pixels: int = Field(8 * 512 * 512, ge=1, description="most rows x width x height in one batch (memory)")
    max_wait_ms: float = Field(5.0, ge=0, description="how long a lone job waits for company before its first step "
                                                      "(later ones join between two steps anyway)")


class QolabaApp(BaseModel):
    """An operator's mapping of one Qolaba app_id: the local model, and optionally its allowed sizes
    ("HEIGHTxWIDTH"; an empty list lets the output follow the input image)."""

    model: str
    sizes: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _model_id_alone(cls, value: Any) -> Any:
        return {"model": value} if isinstance(value, str) else value

    @field_validator("sizes")
    @classmethod
    def _height_x_width(cls, sizes: list[str] | None) -> list[str] | None:
        for size in sizes or ():
            height, sep, width = size.lower().partition("x")
            if not (sep and height.isdigit() and width.isdigit()):
                raise ValueError(f"size {size!r} is not HEIGHTxWIDTH (e.g. 1024x1024)")
        return sizes


class EngineSettings(BaseModel):
    """How each worker runs models (engine/generate.py): device, precision, memory budgets, compilation."""

    device: str = Field("cpu", description="torch device of the workers: cpu, cuda, cuda:1...")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="floating-point type models run in: auto (CPU: bf16 where it has native bf16 -- "
                            "AVX512_BF16/AMX/Arm BF16 -- else fp32; CUDA bf16 where supported, else fp16; "
                            "Flux/HiDream bf16), fp32, fp16, bf16; a model's own `dtype` in models.json wins")
    activation_budget_gb: float | None = Field(
        None, gt=0, description="refuse (fail) a request whose estimated activations exceed this many GiB on the "
                                "device; unset: no estimate (a real out-of-memory still fails the request cleanly)")
    vae_tiling_pixels: int = Field(2048 * 2048, ge=1, description="outputs of at least this many pixels are "
                                                                   "decoded by the VAE in tiles")
    compile_backend: str = Field("inductor", description="torch.compile backend for models with compile: true")
    compile_mode: str | None = Field(None, description="torch.compile mode (e.g. max-autotune)")
    torch_threads: int | None = None
    default_model: str = "demo-sd"  # the trained built-in model (engine/demo); tiny-sd is for fast tests
    preload_models: list[str] = Field(["demo-sd"], description="models each worker loads before it reports ready")
    model_cache_gb: float | None = Field(
        None, gt=0, description="memory budget of each worker's loaded models (GiB, parameters + buffers); least "
                                "recently used models are evicted past it. Default: 80% of the CUDA device's memory, "
                                "50% of RAM on CPU. A model bigger than the budget still loads, alone")
    max_loaded_models: int = Field(2, ge=1, description="most models one worker keeps loaded at once")
    safety_checker: str = Field(
        "auto", description="NSFW checker: 'auto' (built-in tiny models: 'tiny'; others: "
                            "CompVis/stable-diffusion-safety-checker), a hub id, a local folder, 'tiny' (never flags) "
                            "or 'tiny-flag-all' (flags every image; tests)")


class WorkerSettings(BaseModel):
    """The worker processes: how many, on which GPUs, their classes, when one is gone, how often a job may run."""

    count: int = Field(1, ge=0, le=64, description="local worker processes; 0: an API process only (a fleet's "
                                                     "workers run `diffserve worker` elsewhere)")
    gpus: str | None = Field(None, description="one worker per listed GPU: 'all' (every visible GPU) or indices "
                                               "'0,2'; each worker is pinned to cuda:<index>")
    labels: str = Field("", description="GPU class of each local worker, comma-separated in worker order "
                                               "(e.g. a10g,h100); a single value labels every worker")
    stale_s: float = Field(15.0, gt=0, description="a standalone worker (`diffserve worker`) whose heartbeat "
                                                          "is older than this is gone: its job runs elsewhere")
    max_attempts: int = Field(3, ge=1, description="runs of one job (restarts/crashes included) before it fails")
    cpu_priority: Literal["normal", "low", "idle"] = Field(
        "low", description="CPU scheduling of the local worker processes beside the API (`serve`): low (nice 10, "
                           "the default: the API's answers first -- fetch p99 7-11 ms at 160/s with the worker busy "
                           "on the same cores, against 20-210 ms at normal, the worker's throughput the same within "
                           "noise: docs/performance.md); normal; idle (SCHED_IDLE: only CPU time nothing else wants)")


class DialectSettings(BaseModel):
    """What the vendor dialects fix that a request does not say (api/realtime, api/pony, api/qolaba, sync waits)."""

    sync_wait_s: float = Field(
        60.0, ge=0, description="how long an img2img request waits for its result before answering 'processing'"
    )
    realtime_model: str = Field("demo-sd", description="model serving the realtime endpoints (a few-step model)")
    realtime_scheduler: str | None = Field("LCMScheduler", description="scheduler for realtime requests; none: the model's")
    realtime_steps: int = Field(4, ge=1, le=50, description="denoising steps of a realtime request")
    realtime_guidance: float = Field(1.0, ge=0, le=20, description="guidance scale of a realtime request")
    pony_model: str = Field("tiny-sdxl", description="model for pony requests that name no model_id (an SDXL model)")
    qolaba_apps: dict[str, QolabaApp] = Field(
        default_factory=dict, description='Qolaba app_id -> local model, e.g. {"ap-...": "my-flux"} or '
                                          '{"ap-...": {"model": "my-flux", "sizes": ["1024x1024"]}}')


# The short environment names (DIFFSERVE_DTYPE, DIFFSERVE_WORKERS...) and keyword arguments of the flat settings
# this release grouped: each is read into its group's field (they win over the nested DIFFSERVE_ENGINE__DTYPE form).
SHORT_NAMES: dict[str, tuple[str, str]] = {
    **{n: ("server", n) for n in ("host", "port", "public_url", "trusted_hosts", "metrics_key_required")},
    **{n: ("engine", n) for n in ("device", "dtype", "activation_budget_gb", "vae_tiling_pixels", "compile_backend",
                                  "compile_mode", "torch_threads", "default_model", "preload_models",
                                  "model_cache_gb", "max_loaded_models", "safety_checker")},
    "workers": ("worker", "count"), "gpus": ("worker", "gpus"), "worker_labels": ("worker", "labels"),
    "worker_stale_s": ("worker", "stale_s"), "max_attempts": ("worker", "max_attempts"),
    "affinity_wait_s": ("queue", "affinity_wait_s"),
    **{n: ("dialects", n) for n in ("sync_wait_s", "realtime_model", "realtime_scheduler", "realtime_steps",
                                    "realtime_guidance", "pony_model", "qolaba_apps")},
}
_JSON_SHORT_NAMES = {"trusted_hosts", "preload_models", "qolaba_apps"}


class ShortEnvNames(PydanticBaseSettingsSource):
    """DIFFSERVE_<SHORT NAME> environment variables (SHORT_NAMES), handed to Settings under their short name."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in SHORT_NAMES:
            raw = os.environ.get(f"DIFFSERVE_{name.upper()}")
            if raw is not None:
                values[name] = json.loads(raw) if name in _JSON_SHORT_NAMES else raw
        return values


class Settings(BaseSettings):
    """Everything the server and its workers need, in groups passed down to the part that uses each. Env vars use
    the DIFFSERVE_ prefix and `__` into a group (DIFFSERVE_ENGINE__DTYPE); the short names of SHORT_NAMES
    (DIFFSERVE_DTYPE, DIFFSERVE_WORKERS...) are read too."""

    model_config = SettingsConfigDict(env_prefix="DIFFSERVE_", env_nested_delimiter="__")

    data_dir: Path = Path("./data")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the store, e.g. postgresql+psycopg://"
                                                       "user:pw@host/db; default: SQLite in the data dir")
    models_file: Path | None = Field(None, description="models config; default <data_dir>/models.json")
    models_root: Path | None = Field(None, description="where built-in models are built; default <data_dir>/models")
    allow_private_urls: bool = Field(
        False, description="let image/webhook URLs reach loopback, private and link-local addresses (LAN, tests)"
    )
    server: ServerSettings = ServerSettings()
    engine: EngineSettings = EngineSettings()
    worker: WorkerSettings = WorkerSettings()
    queue: QueueSettings = QueueSettings()
    storage: StorageSettings = StorageSettings()
    webhooks: WebhookSettings = WebhookSettings()
    dialects: DialectSettings = DialectSettings()
    batching: BatchingSettings = BatchingSettings()
    images: ImageLimits = ImageLimits()
    limits: RequestLimits = RequestLimits()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, env_settings, ShortEnvNames(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _short_names_into_groups(cls, values: Any) -> Any:
        if not isinstance(values, dict) or not any(name in values for name in SHORT_NAMES):
            return values
        values = dict(values)
        for name, (group, field) in SHORT_NAMES.items():
            if name not in values:
                continue
            section = values.get(group) or {}
            if isinstance(section, BaseModel):
                section = section.model_dump(exclude_unset=True)
            values[group] = {**section, field: values.pop(name)}
        return values

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'diffserve.db'}"

    @property
    def models_dir(self) -> Path:
        return self.models_root or (self.data_dir / "models")

    @property
    def models_path(self) -> Path:
        return self.models_file or (self.data_dir / "models.json")

    @property
    def base_url(self) -> str:
        return (self.server.public_url or f"http://{self.server.host}:{self.server.port}").rstrip("/")
