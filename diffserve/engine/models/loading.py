"""Load an image-to-image diffusers pipeline from where the operator keeps the weights.

Three kinds of source, all through diffusers' own loaders (no hand-written weight loading):

* ``hub``: a Hugging Face repo id, through the HF cache. A cached model loads without any
  network call; see `load_img2img_pipeline` for when the hub is contacted.
* ``folder``: a local diffusers-format folder (``model_index.json`` + component subfolders).
* ``single_file``: one ``.safetensors`` / ``.ckpt`` checkpoint in the original (LDM / CompVis)
  layout, plus a local diffusers config folder that says which pipeline and components it holds
  (``from_single_file(..., config=<folder>)``; without it diffusers would fetch configs online).

Whatever the source's pipeline class (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``,
...), the pipeline built is its image-to-image variant, chosen the way
``AutoPipelineForImage2Image`` chooses it. No safety checker is loaded (safety is handled
elsewhere). Every failure to load becomes `InvalidInput(field="model_id")` naming the model
location, with the original exception chained for the logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffserve.core.errors import InvalidInput

from diffserve.engine.models.sources import SINGLE_FILE_SUFFIXES, ModelSource

if TYPE_CHECKING:  # diffusers is imported lazily: importing it costs seconds
    from diffusers import DiffusionPipeline

_FIELD = "model_id"
_TRUE_VALUES = {"1", "on", "yes", "true"}


def load_img2img_pipeline(
    source: ModelSource,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    offline: bool | None = None,
    cache_dir: str | None = None,
    as_img2img: bool = True,
) -> DiffusionPipeline:
    """Load `source` as an image-to-image pipeline on `device` in `dtype`, progress bars off.

    as_img2img=False loads the pipeline class model_index.json names, as it is: for families that
    build image-to-image on a text-to-image pipeline diffusers has no img2img variant of (HiDream).

    offline (hub and single_file without config):
      * True: only the local HF cache is used; nothing cached -> InvalidInput.
      * False: the hub is asked for the latest revision (the normal online behaviour).
      * None (default): offline if HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set; otherwise the
        cache is tried first (a cached model loads with no network call) and the hub is
        contacted only when the model is not cached.
    cache_dir: the HF hub cache to use (default: huggingface_hub's, i.e. HF_HUB_CACHE / HF_HOME).

    Raises InvalidInput(field="model_id") when the model cannot be loaded.
    """
    if source.kind == "hub":
        pipe = _load_from_hub(source, dtype=dtype, offline=offline, cache_dir=cache_dir, as_img2img=as_img2img)
    elif source.kind == "folder":
        pipe = _load_from_folder(source, dtype=dtype, as_img2img=as_img2img)
    else:
        pipe = _load_from_single_file(source, dtype=dtype, offline=offline, cache_dir=cache_dir,
                                      as_img2img=as_img2img)
    _check_fully_loaded(pipe, source)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def _load_from_hub(
    source: ModelSource, *, dtype: torch.dtype, offline: bool | None, cache_dir: str | None, as_img2img: bool = True
) -> DiffusionPipeline:
    if offline is None and _offline_from_env():
        offline = True
    where = f"the Hugging Face cache at {cache_dir}" if cache_dir else "the Hugging Face cache"

    local_problem = f"not in {where}"
    local_error: InvalidInput | None = None
    if offline is not False:
        # A cached snapshot is loaded as the local folder it is: no hub client call at all. (Even
        # with local_files_only=True, huggingface_hub >= 2 may contact the hub while building
        # request headers, unless HF_HUB_OFFLINE was set when it was imported.)
        snapshot = _cached_snapshot(source, cache_dir)
        if snapshot is not None:
            try:
                pipe = _load_pipeline_folder(snapshot, source, dtype=dtype, as_img2img=as_img2img)
                pipe.register_to_config(_name_or_path=source.location)
                return pipe
            except InvalidInput as exc:
                local_problem, local_error = f"the copy in {where} is incomplete or unreadable: {exc.message}", exc
        if offline:
            raise InvalidInput(
                f"Model weights for {source.location} are not available offline ({local_problem}). "
                f"Download them where the hub is reachable (`hf download {source.location}`) "
                "or configure the model as a local folder.",
                field=_FIELD,
            ) from local_error

    from diffusers import AutoPipelineForImage2Image, DiffusionPipeline

    hub_kwargs = {"cache_dir": cache_dir, "revision": source.revision}
    try:
        with _quiet_hub_warnings():
            config = DiffusionPipeline.load_config(source.location, **hub_kwargs)
            pipeline_class = _pipeline_class(config, source, as_img2img)
            return (AutoPipelineForImage2Image if as_img2img else pipeline_class).from_pretrained(
                source.location, dtype=dtype, **hub_kwargs, **_no_safety_checker(pipeline_class)
            )
    except (InvalidInput, *_PASS_THROUGH):
        raise
    except Exception as exc:  # noqa: BLE001 - every load failure becomes InvalidInput
        if offline is None:
            message = (
                f"Model weights for {source.location} are not available offline ({local_problem}) "
                f"and could not be downloaded: {_reason(exc)}"
            )
        else:
            message = f"Could not load model {source.location} from the Hugging Face hub: {_reason(exc)}"
        raise InvalidInput(message, field=_FIELD) from exc


def _load_from_folder(source: ModelSource, *, dtype: torch.dtype, as_img2img: bool = True) -> DiffusionPipeline:
    folder = Path(source.location)
    if not folder.is_dir():
        raise InvalidInput(f"Model folder {source.location} does not exist", field=_FIELD)
    return _load_pipeline_folder(folder, source, dtype=dtype, as_img2img=as_img2img)


def _load_pipeline_folder(folder: Path, source: ModelSource, *, dtype: torch.dtype,
                          as_img2img: bool = True) -> DiffusionPipeline:
    from diffusers import AutoPipelineForImage2Image

    model_index = _read_local_model_index(folder, what="Model folder")
    pipeline_class = _pipeline_class(model_index, source, as_img2img)
    with _load_errors(source.location):
        return (AutoPipelineForImage2Image if as_img2img else pipeline_class).from_pretrained(
            str(folder), dtype=dtype, local_files_only=True, **_no_safety_checker(pipeline_class)
        )


def _load_from_single_file(
    source: ModelSource, *, dtype: torch.dtype, offline: bool | None, cache_dir: str | None, as_img2img: bool = True
) -> DiffusionPipeline:
    from diffusers.loaders import FromSingleFileMixin

    checkpoint = Path(source.location)
    if not checkpoint.is_file():
        raise InvalidInput(f"Model file {source.location} does not exist", field=_FIELD)
    if checkpoint.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise InvalidInput(
            f"Model file {source.location} is not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)})", field=_FIELD
        )

    if source.config is None:
        if offline or (offline is None and _offline_from_env()):
            raise InvalidInput(
                f"Model file {source.location} needs a local diffusers config folder to load offline "
                "(set the model's config to a folder holding model_index.json and the component configs)",
                field=_FIELD,
            )
        with _load_errors(source.location), _quiet_hub_warnings():
            return _load_single_file_with_hub_config(source, dtype=dtype, offline=offline, cache_dir=cache_dir,
                                                     as_img2img=as_img2img)

    config = Path(source.config)
    if not config.is_dir():
        raise InvalidInput(
            f"Config folder {source.config} for model file {source.location} does not exist", field=_FIELD
        )
    model_index = _read_local_model_index(config, what=f"Config folder for {source.location}:")
    pipeline_class = _pipeline_class(model_index, source, as_img2img)
    if not issubclass(pipeline_class, FromSingleFileMixin):
        raise InvalidInput(
            f"Model file {source.location}: {pipeline_class.__name__} cannot be loaded from a single file",
            field=_FIELD,
        )
    with _load_errors(source.location):
        return pipeline_class.from_single_file(
            str(checkpoint),
            config=str(config),
            local_files_only=True,
            dtype=dtype,
            **_no_safety_checker(pipeline_class),
        )


def _load_single_file_with_hub_config(
    source: ModelSource, *, dtype: torch.dtype, offline: bool | None, cache_dir: str | None, as_img2img: bool = True
) -> DiffusionPipeline:
    """single_file without a config folder (online only): diffusers infers the architecture from
    the checkpoint and uses that architecture's reference repo on the hub for the configs
    (cached ones first unless offline is False)."""
    from diffusers import DiffusionPipeline
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint

    config_repo = fetch_diffusers_config(load_single_file_checkpoint(source.location))["pretrained_model_name_or_path"]
    try:
        model_index = DiffusionPipeline.load_config(config_repo, cache_dir=cache_dir, local_files_only=offline is None)
    except OSError:
        if offline is not None:
            raise
        model_index = DiffusionPipeline.load_config(config_repo, cache_dir=cache_dir, local_files_only=False)
    pipeline_class = _pipeline_class(model_index, source, as_img2img)
    # With local_files_only=True diffusers still downloads the configs when they are not cached.
    return pipeline_class.from_single_file(
        source.location,
        config=config_repo,
        cache_dir=cache_dir,
        local_files_only=offline is None,
        dtype=dtype,
        **_no_safety_checker(pipeline_class),
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

# Not the model's fault: let these through unchanged.
_PASS_THROUGH: tuple[type[BaseException], ...] = (
    MemoryError,
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
)


def _offline_from_env() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set now (huggingface_hub reads them only at import)."""
    from huggingface_hub import constants

    from_env = any(
        os.environ.get(name, "").strip().lower() in _TRUE_VALUES for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return from_env or bool(constants.HF_HUB_OFFLINE)


def _cached_snapshot(source: ModelSource, cache_dir: str | None) -> Path | None:
    """The HF cache's snapshot folder for the repo at `source.revision` (default main), if it has one.

    Pure filesystem lookup through huggingface_hub's cache API (refs/<branch> -> snapshots/<commit>).
    """
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = try_to_load_from_cache(
            source.location, "model_index.json", cache_dir=cache_dir, revision=source.revision
        )
    except HFValidationError as exc:
        raise InvalidInput(f"{source.location} is not a valid Hugging Face repo id", field=_FIELD) from exc
    return Path(found).parent if isinstance(found, str) else None


def _read_local_model_index(folder: Path, *, what: str) -> dict[str, Any]:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise InvalidInput(f"{what} {folder} has no model_index.json (not a diffusers pipeline folder)", field=_FIELD)
    try:
        model_index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{what} {folder}: unreadable model_index.json ({_reason(exc)})", field=_FIELD) from exc
    if not isinstance(model_index, dict) or not isinstance(model_index.get("_class_name"), str):
        raise InvalidInput(f"{what} {folder}: model_index.json has no _class_name", field=_FIELD)
    return model_index


def _pipeline_class(model_index: dict[str, Any], source: ModelSource, as_img2img: bool) -> type[DiffusionPipeline]:
    """The img2img class (`_img2img_class`), or with as_img2img=False the class model_index names."""
    if as_img2img:
        return _img2img_class(model_index, source)
    import diffusers

    class_name = str(model_index.get("_class_name", ""))
    pipeline_class = getattr(diffusers, class_name, None) if class_name.isidentifier() else None
    if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, diffusers.DiffusionPipeline)):
        raise InvalidInput(f"Model {source.location}: {class_name or 'no pipeline class'} is not a diffusers pipeline",
                           field=_FIELD)
    return pipeline_class


def _img2img_class(model_index: dict[str, Any], source: ModelSource) -> type[DiffusionPipeline]:
    """The image-to-image pipeline class for a model_index `_class_name`, as AutoPipelineForImage2Image picks it."""
    from diffusers.pipelines.auto_pipeline import AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, _get_task_class

    class_name = str(model_index.get("_class_name", ""))
    lookup_name = class_name
    if "Img2Img" not in lookup_name and "ControlPipeline" in lookup_name:
        lookup_name = lookup_name.replace("ControlPipeline", "ControlImg2ImgPipeline")
    pipeline_class = _get_task_class(AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, lookup_name, throw_error_if_not_exist=False)
    if pipeline_class is None:
        raise InvalidInput(
            f"Model {source.location} is a {class_name or 'unknown pipeline'}, which has no image-to-image pipeline "
            "in diffusers",
            field=_FIELD,
        )
    return pipeline_class


def _no_safety_checker(pipeline_class: type) -> dict[str, Any]:
    """Loader kwargs that skip the safety checker, for pipeline classes that have one."""
    import inspect

    parameters = inspect.signature(pipeline_class.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "safety_checker" in parameters:
        kwargs["safety_checker"] = None
    if "requires_safety_checker" in parameters:
        kwargs["requires_safety_checker"] = False
    return kwargs


def _check_fully_loaded(pipe: DiffusionPipeline, source: ModelSource) -> None:
    """A checkpoint that lacks weights the config asks for can leave parameters on the meta device."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            if any(p.device.type == "meta" for p in component.parameters()):
                raise InvalidInput(
                    f"Model {source.location}: weights for {name} are missing (checkpoint and config do not match)",
                    field=_FIELD,
                )


@contextlib.contextmanager
def _load_errors(location: str) -> Iterator[None]:
    try:
        yield
    except (InvalidInput, *_PASS_THROUGH):
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported as the model being unusable
        reason = _reason(exc)
        if "meta tensor" in reason:  # diffusers left weights the checkpoint lacks uninitialised
            reason = "weights are missing from the checkpoint (checkpoint and config do not match)"
        raise InvalidInput(f"Could not load model {location}: {reason}", field=_FIELD) from exc


@contextlib.contextmanager
def _quiet_hub_warnings() -> Iterator[None]:
    # diffusers 0.42's load_config passes the deprecated `local_dir_use_symlinks` to hf_hub_download.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        yield


def _reason(exc: BaseException) -> str:
    """One readable line from an exception: its first non-empty line, shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = text.rstrip(". ")
    return text if len(text) <= 300 else text[:297] + "..."
