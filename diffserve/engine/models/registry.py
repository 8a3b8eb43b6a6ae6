"""The model registry: model_id -> where the weights are, which family, which limits; and the
assets a request can add (LoRAs, textual-inversion embeddings, VAEs, IP-Adapters) by id.

Read from a JSON file (default `<data_dir>/models.json`), on top of the built-in entries (demo-sd, the
small model trained in this repository, once its weights are committed; the tiny random models that work offline; the vendor's five
IP-Adapter ids). File format (every section optional):

    {"models": {
        "realistic-vision-51": {"kind": "hub", "location": "SG161222/Realistic_Vision_V5.1_noVAE"},
        "my-folder-model":     {"kind": "folder", "location": "/srv/models/my-model"},
        "my-checkpoint":       {"kind": "single_file", "location": "/srv/ckpt/model.safetensors",
                                "config": "/srv/models/sd15-config"},
        "...": {"family": "sd", "limits": {"max_size": 768}, "revision": "main"}
     },
     "loras":       {"add-detail": {"kind": "file", "location": "/srv/loras/add_detail.safetensors", "family": "sd"}},
     "embeddings":  {"easynegative": {"kind": "file", "location": "/srv/emb/easynegative.safetensors"}},
     "vaes":        {"sd-vae-ft-mse": {"kind": "hub", "location": "stabilityai/sd-vae-ft-mse"}},
     "ip_adapters": {"ip-adapter_sd15": {"kind": "folder", "location": "/srv/IP-Adapter", "subfolder": "models",
                                         "weight_name": "ip-adapter_sd15.safetensors",
                                         "image_encoder": "models/image_encoder", "family": "sd"}}}

Asset entries are described in asset_entries.py; reading and writing the file in registry_file.py.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from diffserve.core.errors import InvalidInput, ModelNotFound
from diffserve.core.request import ModelLimits
from diffserve.core.step_cache import StepCache
from diffserve.engine.models.asset_entries import (
    ASSET_KINDS,
    ENTRY_TYPES,
    KIND_NOUN,
    REQUEST_FIELD,
    EmbeddingEntry,
    IpAdapterEntry,
    LoraEntry,
    VaeEntry,
    builtin_ip_adapters,
)
from diffserve.engine.models.precision import DtypeSetting
from diffserve.engine.models.sources import ModelSource
from diffserve.engine.models.registry_file import (
    ModelsFileError,
    check_entry_id,
    describe_validation_error,
    file_signature,
    locked,
    read_raw,
    write_text,
)
from diffserve.engine.demo import (DEMO_SD_DESCRIPTION, DEMO_SD_FOLDER, DEMO_SD_LIMITS, WEIGHTS, preview_rgb,
                                   weights_present)
from diffserve.engine.models.specs import FAMILIES, check_family, family_spec

log = logging.getLogger(__name__)

__all__ = ["ModelEntry", "ModelRegistry", "ModelsFileError", "RegistryDoc", "builtin_models", "read_models_file"]

# A models file's `family`: one of the family specs' names (engine/models/specs/)
FamilyName = Annotated[str, AfterValidator(check_family)]


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hub", "folder", "single_file"]
    location: str
    config: str | None = None
    revision: str | None = None
    family: FamilyName = "sd"
    limits: ModelLimits = ModelLimits()
    builtin: str | None = None  # name of the tiny model the engine builds here when missing
    description: str = ""
    # flux-depth only: the depth-estimation model that makes the control image (hub id or folder);
    # default: the model folder's depth_estimator/ (see engine/families/flux_control.py)
    depth_model: str | None = None
    # GPU path (engine/models/precision.py, engine/models/speedups.py): the type this model runs in (None: the
    # server's DIFFSERVE_DTYPE), torch.compile of its UNet / transformer, channels_last for a UNet
    dtype: DtypeSetting | None = None
    compile: bool = False
    channels_last: bool = False
    # the step cache its requests get when they name none (core/step_cache.py); None: off
    step_cache: StepCache | None = None
    # step previews (engine/progress.py): the RGB each latent channel maps to, one row per latent channel;
    # None: SD 1.x's factors. demo-sd's latents are colours: its rows come from its VAE's scaling factor
    preview_rgb: tuple[tuple[float, float, float], ...] | None = None

    @field_validator("location")
    @classmethod
    def _location_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("location must not be empty")
        return value.strip()

    @model_validator(mode="after")
    def _fits_kind(self) -> "ModelEntry":
        if self.config is not None and self.kind != "single_file":
            raise ValueError("config applies to single_file sources only")
        if self.revision is not None and self.kind != "hub":
            raise ValueError("revision applies to hub sources only")
        for name in sorted({field for spec in FAMILIES for field in spec.entry_fields}):  # e.g. depth_model
            if getattr(self, name) is not None and name not in family_spec(self.family).entry_fields:
                takers = ", ".join(spec.name for spec in FAMILIES if name in spec.entry_fields)
                raise ValueError(f"{name} applies to {takers} models only")
        return self

    def source(self) -> ModelSource:
        return ModelSource(kind=self.kind, location=self.location, config=self.config, revision=self.revision)


class RegistryDoc(BaseModel):
    """The models file's content; also the shape of the built-in entries."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelEntry] = Field(default_factory=dict)
    loras: dict[str, LoraEntry] = Field(default_factory=dict)
    embeddings: dict[str, EmbeddingEntry] = Field(default_factory=dict)
    vaes: dict[str, VaeEntry] = Field(default_factory=dict)
    ip_adapters: dict[str, IpAdapterEntry] = Field(default_factory=dict)

    def section(self, kind: str) -> dict[str, Any]:
        return getattr(self, kind)

    def to_json(self) -> str:
        # exclude_unset: what the operator gave is written back, a value equal to the default included
        # (`models add --family sd` keeps "family": "sd" in the file)
        data = {kind: {entry_id: entry.model_dump(mode="json", exclude_unset=True)
                       for entry_id, entry in sorted(self.section(kind).items())}
                for kind in SECTIONS if self.section(kind)}
        return json.dumps(data, indent=2) + "\n"


SECTIONS: tuple[str, ...] = ("models", *ASSET_KINDS)


class ModelRegistry:
    """Models and assets by id: the built-in entries, overridden and extended by the models file.

    Lookups notice when the models file changed (one stat per lookup) and re-read it, so a worker
    picks up entries added by the CLI or the API before its next job. A file that became invalid
    is reported in the log and the last good content stays in use.

    The write API (`add_model`, `remove_model`, `add_asset`, `remove_asset`) validates the entry,
    changes the file under an inter-process lock and replaces it in one rename. Built-in entries
    cannot be removed; an entry in the file with the same id overrides one.
    """

    def __init__(self, builtin: RegistryDoc | dict[str, ModelEntry], path: Path | None = None) -> None:
        self._builtin = builtin if isinstance(builtin, RegistryDoc) else RegistryDoc(models=dict(builtin))
        self._path = path
        self._lock = threading.RLock()
        self._file = RegistryDoc()
        self._signature: tuple[int, int, int] | None = None
        if path is not None:
            self._file, self._signature = self._read_file(path)

    @classmethod
    def load(cls, models_path: Path, models_dir: Path) -> "ModelRegistry":
        """The built-in entries plus the models file (if any). Raises ModelsFileError for a bad file."""
        return cls(builtin_doc(models_dir), models_path)

    @property
    def path(self) -> Path | None:
        return self._path

    # ---- lookups --------------------------------------------------------------------------

    def get(self, model_id: str) -> ModelEntry:
        entry = self._lookup("models", model_id)
        if entry is None:
            raise ModelNotFound(model_id)
        return entry

    def ids(self) -> list[str]:
        return [model_id for model_id, _ in self.items()]

    def items(self) -> list[tuple[str, ModelEntry]]:
        return self.entries("models")

    def entries(self, kind: str) -> list[tuple[str, Any]]:
        """Every entry of a section ("models", "loras", ...), sorted by id."""
        _check_section(kind)
        self.refresh()
        merged = {**self._builtin.section(kind), **self._file.section(kind)}
        return sorted(merged.items())

    def asset(self, kind: str, asset_id: str) -> Any:
        """The entry of a LoRA / embedding / VAE / IP-Adapter; InvalidInput naming the request field if none."""
        if kind not in ASSET_KINDS:
            raise ValueError(f"unknown asset kind {kind!r}; known: {', '.join(ASSET_KINDS)}")
        entry = self._lookup(kind, asset_id)
        if entry is None:
            field = REQUEST_FIELD[kind]
            raise InvalidInput(f"{field}: {KIND_NOUN[kind]} not found: {asset_id}", field=field)
        return entry

    def is_builtin(self, kind: str, entry_id: str) -> bool:
        return entry_id in self._builtin.section(kind)

    def check_request(self, draft: Any) -> None:
        """Refuse at submit what the engine could not run: unknown LoRA / embedding / VAE /
        IP-Adapter ids, assets of another model family, an IP-Adapter without its image.
        `draft` is a RequestDraft (or anything with its asset fields)."""
        model = self.get(draft.model_id)
        loras = list(draft.lora_models or [])
        for lora_id in loras:
            if loras.count(lora_id) > 1:
                raise InvalidInput(f"lora_model: {lora_id} is listed more than once", field="lora_model")
            self._check_family("loras", lora_id, draft.model_id, model)
        if draft.embeddings_model:
            self._check_family("embeddings", draft.embeddings_model, draft.model_id, model)
        if draft.vae:
            self._check_family("vaes", draft.vae, draft.model_id, model)
        if draft.ip_adapter_id:
            self._check_family("ip_adapters", draft.ip_adapter_id, draft.model_id, model)
            if not draft.ip_adapter_image:
                raise InvalidInput("ip_adapter_image is required with ip_adapter_id", field="ip_adapter_image")

    def _check_family(self, kind: str, asset_id: str, model_id: str, model: ModelEntry) -> None:
        entry = self.asset(kind, asset_id)
        if entry.family is not None and entry.family != model.family:
            field = REQUEST_FIELD[kind]
            raise InvalidInput(
                f"{field}: {KIND_NOUN[kind]} {asset_id} is for {entry.family} models; "
                f"{model_id} is a model of the {model.family} family", field=field)

    def _lookup(self, kind: str, entry_id: str) -> Any:
        self.refresh()
        found = self._file.section(kind).get(entry_id)
        return found if found is not None else self._builtin.section(kind).get(entry_id)

    # ---- keeping up with the file -----------------------------------------------------------

    def refresh(self) -> bool:
        """Re-read the models file if it changed since it was read (cheap: one stat). True if re-read."""
        if self._path is None:
            return False
        signature = file_signature(self._path)
        if signature == self._signature:
            return False
        with self._lock:
            if signature == self._signature:
                return False
            try:
                self._file, self._signature = self._read_file(self._path)
            except ModelsFileError as exc:
                log.error("models file changed but cannot be used; keeping the previous entries: %s", exc)
                self._signature = signature  # report it once, not at every lookup
                return False
            log.info("models file %s re-read", self._path)
            return True

    def reload(self, models_path: Path | None = None, models_dir: Path | None = None) -> None:
        """Re-read the models file now (optionally another file / built-in folder); a bad file keeps
        the previous entries (logged)."""
        with self._lock:
            if models_dir is not None:
                self._builtin = builtin_doc(models_dir)
            if models_path is not None:
                self._path = models_path
            self._signature = None
            self.refresh()

    @staticmethod
    def _read_file(path: Path) -> tuple[RegistryDoc, tuple[int, int, int] | None]:
        signature = file_signature(path)  # before reading: a change during the read is seen next time
        return parse_doc(read_raw(path), path), signature

    # ---- writing -----------------------------------------------------------------------------

    def add_model(self, model_id: str, entry: ModelEntry | dict[str, Any], *, replace: bool = False) -> ModelEntry:
        """Add (or with replace=True, replace) a model in the models file. InvalidInput for a bad
        id or entry, or an id that exists (field "model_id")."""
        return self._add("models", model_id, entry, replace=replace)

    def remove_model(self, model_id: str) -> ModelEntry:
        """Remove a model from the models file; the removed entry. ModelNotFound / InvalidInput."""
        return self._remove("models", model_id)

    def add_asset(self, kind: str, asset_id: str, entry: Any, *, replace: bool = False) -> Any:
        """Add a LoRA / embedding / VAE / IP-Adapter: kind is "loras", "embeddings", "vaes" or "ip_adapters"."""
        _check_asset_kind(kind)
        return self._add(kind, asset_id, entry, replace=replace)

    def remove_asset(self, kind: str, asset_id: str) -> Any:
        _check_asset_kind(kind)
        return self._remove(kind, asset_id)

    def _add(self, kind: str, entry_id: str, entry: Any, *, replace: bool) -> Any:
        field = _id_field(kind)
        problem = check_entry_id(entry_id)
        if problem:
            raise InvalidInput(f"{field}: {problem} (got {entry_id!r})", field=field)
        entry = _validate_entry(kind, entry_id, entry)

        def change(doc: RegistryDoc) -> None:
            exists = entry_id in doc.section(kind) or self.is_builtin(kind, entry_id)
            if exists and not replace:
                raise InvalidInput(f"{field}: {_noun(kind)} {entry_id} already exists", field=field)
            doc.section(kind)[entry_id] = entry

        self._write(change)
        return entry

    def _remove(self, kind: str, entry_id: str) -> Any:
        field = _id_field(kind)
        removed: list[Any] = []

        def change(doc: RegistryDoc) -> None:
            if entry_id not in doc.section(kind):
                if self.is_builtin(kind, entry_id):
                    raise InvalidInput(f"{field}: {_noun(kind)} {entry_id} is built in and cannot be removed",
                                       field=field)
                if kind == "models":
                    raise ModelNotFound(entry_id)
                raise InvalidInput(f"{field}: {_noun(kind)} not found: {entry_id}", field=field)
            removed.append(doc.section(kind).pop(entry_id))

        self._write(change)
        return removed[0]

    def _write(self, change: Callable[[RegistryDoc], None]) -> None:
        if self._path is None:
            raise RuntimeError("this registry has no models file to write")
        with self._lock, locked(self._path):
            doc = parse_doc(read_raw(self._path), self._path)  # the file as it is now, not as last seen
            change(doc)
            write_text(self._path, doc.to_json())
            self._file, self._signature = doc, file_signature(self._path)


def _check_section(kind: str) -> None:
    if kind not in SECTIONS:
        raise ValueError(f"unknown registry section {kind!r}; known: {', '.join(SECTIONS)}")


def _check_asset_kind(kind: str) -> None:
    if kind not in ASSET_KINDS:
        raise ValueError(f"unknown asset kind {kind!r}; known: {', '.join(ASSET_KINDS)}")


def _id_field(kind: str) -> str:
    return "model_id" if kind == "models" else REQUEST_FIELD[kind]


def _noun(kind: str) -> str:
    return "model" if kind == "models" else KIND_NOUN[kind]


def _validate_entry(kind: str, entry_id: str, entry: Any) -> Any:
    entry_type = ModelEntry if kind == "models" else ENTRY_TYPES[kind]
    if isinstance(entry, entry_type):
        return entry
    if isinstance(entry, BaseModel):
        entry = entry.model_dump(exclude_unset=True)
    try:
        return entry_type.model_validate(entry)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"]
        raise InvalidInput(f"{_noun(kind)} {entry_id}: {describe_validation_error(exc)}",
                           field=str(first[0]) if first else None) from exc


def builtin_models(models_dir: Path, demo_weights: Path = WEIGHTS) -> dict[str, ModelEntry]:
    demo = {
        # trained weights shipped in the package (engine/demo), assembled under models_dir; only once committed
        "demo-sd": ModelEntry(
            kind="folder", location=str(models_dir / DEMO_SD_FOLDER), family="sd", limits=DEMO_SD_LIMITS,
            builtin="demo-sd", description=DEMO_SD_DESCRIPTION, preview_rgb=preview_rgb(demo_weights),
        ),
    } if weights_present(demo_weights) else {}
    # each family's tiny build (made on first use under models_dir), and the vendor ids served on it
    tiny = {
        model_id: ModelEntry(kind="folder", location=str(models_dir / spec.tiny.model_id), family=spec.name,
                             limits=limits, builtin=spec.tiny.model_id, description=description)
        for spec in FAMILIES if spec.tiny is not None
        for model_id, limits, description in (
            (spec.tiny.model_id, spec.tiny.limits, spec.tiny.description),
            *((vendor.model_id, vendor.limits, vendor.description) for vendor in spec.vendor_models))
    }
    return {**demo, **tiny}


def builtin_doc(models_dir: Path) -> RegistryDoc:
    """Every built-in entry: the tiny models (built on first use under models_dir) and the vendor's IP-Adapter ids."""
    return RegistryDoc(models=builtin_models(models_dir), ip_adapters=builtin_ip_adapters())


def parse_doc(raw: dict[str, Any], path: Path | str = "models file") -> RegistryDoc:
    """Validate the models file's JSON object. Raises ModelsFileError naming the entry."""
    try:
        doc = RegistryDoc.model_validate(raw)
    except ValidationError as exc:
        raise ModelsFileError(f"{path}: {describe_validation_error(exc)}") from exc
    for kind in SECTIONS:
        for entry_id in doc.section(kind):
            problem = check_entry_id(entry_id)
            if problem:
                raise ModelsFileError(f"{path}: {kind}.{entry_id!r}: {problem}")
    return doc


def read_models_file(path: Path) -> dict[str, ModelEntry]:
    """The models section of a models file (ModelsFileError when the file is invalid)."""
    return dict(parse_doc(read_raw(path), path).models)
