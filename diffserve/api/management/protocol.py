"""ModelsLab enterprise server-management bodies (every call: POST with the admin `key` in the body)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from diffserve.core.errors import InvalidInput
from diffserve.management.models import CATEGORY_FAMILY, MODEL_TYPES, LoadSpec
from diffserve.api.loose import LooseBool, LooseStr, Text
from diffserve.api.modelslab.protocol import check_url

VAE_TYPES = ("diffusers", "safetensors", "pt")
BASE64_TO_URL_MAX_BYTES = 5 * 1024 * 1024


class KeyOnly(BaseModel):
    model_config = ConfigDict(extra="ignore")

    key: LooseStr = Field(None, description="an admin API key")


class ModelIdRequest(KeyOnly):
    model_id: LooseStr = None

    def required_model_id(self) -> str:
        if not self.model_id or not self.model_id.strip():
            raise InvalidInput("model_id is required", field="model_id")
        return self.model_id.strip()


class LoadModelRequest(KeyOnly):
    url: Text = Field(None, description="Hugging Face repo id, local path, or http(s) URL of a checkpoint")
    model_id: LooseStr = Field(None, description="the id the model gets here")
    model_type: LooseStr = Field(None, description=" | ".join(MODEL_TYPES) + " (default huggingface)")
    from_safetensors: LooseBool = Field(None, description='"yes" for a single .safetensors checkpoint')
    revision: LooseStr = Field(None, description="hub branch/tag/commit; fp16/fp32 are precision hints")
    webhook: LooseStr = Field(None, description="called when the model has loaded (or failed to)")
    upcast_attention: LooseBool = Field(None, description="accepted; diffusers reads it from the model config")
    model_category: LooseStr = Field(None, description="stable_diffusion | stable_diffusion_xl | flux (v2 name)")
    family: LooseStr = Field(None, description="diffserve: sd | sdxl | flux ... (default: from the folder, else sd)")
    config: Text = Field(None, description="diffserve: local diffusers config folder for a checkpoint file")

    def to_spec(self) -> LoadSpec:
        if not self.url or not self.url.strip():
            raise InvalidInput("url is required", field="url")
        model_type = (self.model_type or "huggingface").strip().lower()
        if model_type not in MODEL_TYPES:
            raise InvalidInput(f"model_type must be one of: {', '.join(MODEL_TYPES)} (got {self.model_type!r})",
                               field="model_type")
        category = (self.model_category or "").strip().lower()
        if category and category not in CATEGORY_FAMILY:
            raise InvalidInput(f"model_category must be one of: stable_diffusion, stable_diffusion_xl, flux "
                               f"(got {self.model_category!r})", field="model_category")
        return LoadSpec(
            model_id=ModelIdRequest(model_id=self.model_id).required_model_id(),
            url=self.url.strip(),
            model_type=model_type,
            from_safetensors=bool(self.from_safetensors),
            revision=(self.revision or "").strip() or None,
            webhook=check_url("webhook", self.webhook),
            family=(self.family or "").strip() or CATEGORY_FAMILY.get(category),
            config=(self.config or "").strip() or None,
        )


class LoadVaeRequest(KeyOnly):
    webhook: LooseStr = Field(None, description="accepted; a VAE is registered at once (no load event)")
    vae_id: LooseStr = Field(None, description="the id requests use in `vae`")
    vae_url: Text = Field(None, description="hub repo id or local folder (diffusers), or a checkpoint URL/path")
    vae_type: LooseStr = Field(None, description="diffusers | safetensors | pt")
    config: Text = Field(None, description="diffserve: local config folder for a checkpoint file")

    def checked(self) -> tuple[str, str, str]:
        if not self.vae_id or not self.vae_id.strip():
            raise InvalidInput("vae_id is required", field="vae_id")
        if not self.vae_url or not self.vae_url.strip():
            raise InvalidInput("vae_url is required", field="vae_url")
        vae_type = (self.vae_type or "").strip().lower()
        if vae_type not in VAE_TYPES:
            raise InvalidInput(f"vae_type must be one of: {', '.join(VAE_TYPES)} (got {self.vae_type!r})",
                               field="vae_type")
        return self.vae_id.strip(), self.vae_url.strip(), vae_type


class UploadImageRequest(KeyOnly):
    base64_image: Text = Field(None, description="raw base64 or a data URI")


class Base64ToUrlRequest(KeyOnly):
    base64_string: Text = Field(None, description="an image as raw base64 or a data URI, at most 5 MB")
