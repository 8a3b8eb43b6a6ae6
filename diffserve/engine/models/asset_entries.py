"""Registry entries for the assets a request can add to a model: LoRAs, textual-inversion
embeddings, VAEs and IP-Adapters.

Every asset says where its weights are, the same three ways a model does:

* ``hub``: a Hugging Face repo id (``location``), optionally a ``revision``, a ``subfolder`` and a
  ``weight_name`` inside it; served from the HF cache, downloaded when missing and the hub is reachable;
* ``folder``: a local folder (``location``), optionally a ``subfolder`` and a ``weight_name`` inside it;
* ``file``: one local weights file (``location``).

``family`` says which model family the asset fits (``None``: not declared, not checked). A request
that pairs an asset with a model of another family is refused at submit (400 naming the field).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from diffserve.engine.models.specs import check_family

AssetKind = Literal["loras", "embeddings", "vaes", "ip_adapters"]
ASSET_KINDS: tuple[AssetKind, ...] = ("loras", "embeddings", "vaes", "ip_adapters")

# The request field that names an asset of each kind (errors name it).
REQUEST_FIELD: dict[str, str] = {
    "loras": "lora_model",
    "embeddings": "embeddings_model",
    "vaes": "vae",
    "ip_adapters": "ip_adapter_id",
}
# How the kind reads in messages.
KIND_NOUN: dict[str, str] = {"loras": "LoRA", "embeddings": "embedding", "vaes": "VAE", "ip_adapters": "IP-Adapter"}


class AssetEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hub", "folder", "file"]
    location: str
    subfolder: str | None = None
    weight_name: str | None = None
    revision: str | None = None
    family: str | None = None
    description: str = ""

    @field_validator("location")
    @classmethod
    def _location_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("location must not be empty")
        return value.strip()

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str | None) -> str | None:
        return None if value is None else check_family(value)

    @model_validator(mode="after")
    def _fits_kind(self) -> "AssetEntry":
        if self.revision is not None and self.kind != "hub":
            raise ValueError("revision applies to hub sources only")
        if self.kind == "file" and (self.subfolder or self.weight_name):
            raise ValueError("a file source is its own weights: subfolder and weight_name apply to hub and folder")
        return self


class LoraEntry(AssetEntry):
    """A LoRA in diffusers/PEFT or kohya/A1111 format (diffusers tells them apart by their keys)."""


class EmbeddingEntry(AssetEntry):
    """A textual-inversion embedding (A1111 .pt/.safetensors, or diffusers' learned_embeds)."""

    token: str | None = None  # the word that calls it in a prompt; default: the embedding's id

    @field_validator("token")
    @classmethod
    def _token_word(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value) or "," in value):
            raise ValueError("token must be one word (no spaces or commas)")
        return value


class VaeEntry(AssetEntry):
    """An AutoencoderKL: a diffusers folder (config.json + weights), a hub repo, or one checkpoint file."""

    config: str | None = None  # file only: a local folder with the VAE's config.json (needed offline)

    @model_validator(mode="after")
    def _config_for_file(self) -> "VaeEntry":
        if self.config is not None and self.kind != "file":
            raise ValueError("config applies to file sources only")
        return self


class IpAdapterEntry(AssetEntry):
    """IP-Adapter weights plus the CLIP image encoder they were trained with.

    weight_name: the adapter file inside `location` (+ `subfolder`), e.g. ip-adapter_sd15.safetensors.
    image_encoder: the image encoder's folder, relative to `location` (e.g. models/image_encoder), or
        an absolute local path.
    """

    kind: Literal["hub", "folder"]
    weight_name: str
    image_encoder: str
    family: str

    @field_validator("weight_name", "image_encoder")
    @classmethod
    def _given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()


ENTRY_TYPES: dict[str, type[AssetEntry]] = {
    "loras": LoraEntry,
    "embeddings": EmbeddingEntry,
    "vaes": VaeEntry,
    "ip_adapters": IpAdapterEntry,
}


def builtin_ip_adapters() -> dict[str, IpAdapterEntry]:
    """The five IP-Adapter ids of the ModelsLab v6 page, mapped to the public h94/IP-Adapter repo
    (its `models/` for SD 1.5, `sdxl_models/` for SDXL; the vit-h SDXL adapters use the SD 1.5
    ViT-H image encoder). They load from the Hugging Face cache, or download where the hub is
    reachable; the models file can point any of these ids elsewhere."""
    repo = "h94/IP-Adapter"
    specs = {
        "ip-adapter_sd15": ("models", "ip-adapter_sd15.safetensors", "models/image_encoder", "sd"),
        "ip-adapter-plus-face_sd15": ("models", "ip-adapter-plus-face_sd15.safetensors", "models/image_encoder", "sd"),
        "ip-adapter_sdxl": ("sdxl_models", "ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder", "sdxl"),
        "ip-adapter-plus_sdxl_vit-h": (
            "sdxl_models", "ip-adapter-plus_sdxl_vit-h.safetensors", "models/image_encoder", "sdxl"),
        "ip-adapter-plus-face_sdxl_vit-h": (
            "sdxl_models", "ip-adapter-plus-face_sdxl_vit-h.safetensors", "models/image_encoder", "sdxl"),
    }
    return {
        ip_id: IpAdapterEntry(kind="hub", location=repo, subfolder=sub, weight_name=weights, image_encoder=encoder,
                              family=fam, description=f"{repo}: {sub}/{weights}")
        for ip_id, (sub, weights, encoder, fam) in specs.items()
    }
