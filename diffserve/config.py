"""Settings, built once (environment + optional file) and passed down. No module-level instance."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ImageLimits(BaseModel):
    """Bounds applied to every input image, whatever its source."""

    max_bytes: int = Field(20 * 1024 * 1024, description="largest encoded image accepted (bytes)")
    max_pixels: int = Field(4096 * 4096, description="largest decoded image accepted (width*height)")
    fetch_timeout_s: float = Field(15.0, description="total time allowed to fetch an image URL")
    max_redirects: int = 5


class Settings(BaseSettings):
    """Everything the server and its workers need. Env vars use the DIFFSERVE_ prefix."""

    model_config = SettingsConfigDict(env_prefix="DIFFSERVE_", env_nested_delimiter="__")

    data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        None, description="base URL clients use to reach this server; default http://host:port"
    )
    models_file: Path | None = Field(None, description="models config; default <data_dir>/models.json")
    models_root: Path | None = Field(None, description="where built-in models are built; default <data_dir>/models")
    workers: int = Field(1, ge=1, le=64)
    device: str = "cpu"
    torch_threads: int | None = None
    sync_wait_s: float = Field(
        60.0, ge=0, description="how long an img2img request waits for its result before answering 'processing'"
    )
    max_attempts: int = Field(3, ge=1, description="runs of one job (restarts/crashes included) before it fails")
    default_model: str = "tiny-sd"
    preload_models: list[str] = Field(["tiny-sd"], description="models each worker loads before it reports ready")
    images: ImageLimits = ImageLimits()
    allow_private_urls: bool = Field(
        False, description="let image/webhook URLs reach loopback, private and link-local addresses (LAN, tests)"
    )

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'diffserve.db'}"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"

    @property
    def models_dir(self) -> Path:
        return self.models_root or (self.data_dir / "models")

    @property
    def models_path(self) -> Path:
        return self.models_file or (self.data_dir / "models.json")

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
