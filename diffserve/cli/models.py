"""`diffserve models list|add|remove`: the model registry from the command line.

    diffserve models list
    diffserve models add realistic-vision --hub SG161222/Realistic_Vision_V5.1_noVAE --family sd --max-size 768
    diffserve models add my-model --folder /srv/models/my-model --limits '{"max_steps": 40}'
    diffserve models add my-ckpt --single-file /srv/ckpt/model.safetensors --config /srv/models/sd15-config
    diffserve models add add-detail --kind lora --file /srv/loras/add_detail.safetensors --family sd
    diffserve models add easyneg --kind embedding --file /srv/emb/easynegative.safetensors --token easynegative
    diffserve models add ft-mse --kind vae --hub stabilityai/sd-vae-ft-mse
    diffserve models add ip-adapter_sd15 --kind ip-adapter --folder /srv/IP-Adapter --subfolder models \\
        --weight-name ip-adapter_sd15.safetensors --image-encoder models/image_encoder --family sd --replace
    diffserve models remove my-model
    diffserve models remove add-detail --kind lora

Changes go to the models file through the registry's write API (validated, locked, atomic); a
running server and its workers pick them up before their next request.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = {"model": "models", "lora": "loras", "embedding": "embeddings", "vae": "vaes", "ip-adapter": "ip_adapters"}
LIMIT_FLAGS = ("min_size", "max_size", "max_steps", "default_steps", "max_samples")

SettingsFor = Callable[[argparse.Namespace], Any]


def add_models_commands(models: Any, common: argparse.ArgumentParser, settings_for: SettingsFor) -> None:
    """Add list/add/remove to the `models` sub-command parser."""
    listing = models.add_parser("list", parents=[common], help="list models and assets")
    listing.add_argument("--kind", choices=["all", *KINDS], default="all")
    listing.set_defaults(func=lambda args: _list(args, settings_for(args)))

    add = models.add_parser("add", parents=[common], help="add a model or an asset to the models file")
    add.add_argument("id", help="the id requests use (model_id, lora_model, vae, ...)")
    add.add_argument("--kind", choices=list(KINDS), default="model")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--hub", metavar="REPO_ID", help="a Hugging Face repo id")
    source.add_argument("--folder", metavar="PATH", help="a local folder (diffusers layout for models and VAEs)")
    source.add_argument("--single-file", "--file", dest="file", metavar="PATH", help="one local weights file")
    add.add_argument("--revision", help="hub only: branch, tag or commit")
    add.add_argument("--config", metavar="DIR",
                     help="single files (models, VAEs): local diffusers config folder, needed offline")
    add.add_argument("--subfolder", help="assets: folder inside the repo / folder")
    add.add_argument("--weight-name", help="assets: weights file inside the repo / folder")
    add.add_argument("--token", help="embeddings: the prompt word that calls it (default: the id)")
    add.add_argument("--image-encoder", metavar="PATH",
                     help="IP-Adapters: image encoder folder relative to the repo / folder, or absolute")
    add.add_argument("--family", help="model family (sd, sdxl, flux...); assets: the family they fit")
    add.add_argument("--limits", metavar="JSON", help='models: limits as JSON, e.g. {"max_size": 768}')
    for name in LIMIT_FLAGS:
        add.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name, help=f"models: limits.{name}")
    add.add_argument("--description", help="shown by `models list`")
    add.add_argument("--replace", action="store_true", help="replace an entry with the same id")
    add.set_defaults(func=lambda args: _add(args, settings_for(args)))

    remove = models.add_parser("remove", parents=[common], help="remove a model or an asset from the models file")
    remove.add_argument("id")
    remove.add_argument("--kind", choices=list(KINDS), default="model")
    remove.set_defaults(func=lambda args: _remove(args, settings_for(args)))


def _registry(settings: Any):
    from diffserve.engine.models.registry import ModelRegistry

    return ModelRegistry.load(settings.models_path, settings.models_dir)


def _list(args: argparse.Namespace, settings: Any) -> int:
    from diffserve.engine.models.registry import SECTIONS

    registry = _failing_nicely(lambda: _registry(settings))
    if registry is None:
        return 1
    sections = SECTIONS if args.kind == "all" else (KINDS[args.kind],)
    for section in sections:
        entries = registry.entries(section)
        if args.kind == "all":
            print(f"[{section}]")
        for entry_id, entry in entries:
            origin = "built-in" if registry.is_builtin(section, entry_id) else "file"
            family = entry.family or "any"
            where = entry.location + (f" ({entry.subfolder}/{entry.weight_name})" if getattr(
                entry, "weight_name", None) and getattr(entry, "subfolder", None) else "")
            token = f"  token={entry.token or entry_id}" if section == "embeddings" else ""
            print(f"{entry_id:<32} {family:<12} {entry.kind:<12} {where}{token}  [{origin}]")
    return 0


def _add(args: argparse.Namespace, settings: Any) -> int:
    section = KINDS[args.kind]
    try:
        entry = _entry(args, section)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    registry = _failing_nicely(lambda: _registry(settings))
    if registry is None:
        return 1
    if section == "models":
        added = _failing_nicely(lambda: registry.add_model(args.id, entry, replace=args.replace))
    else:
        added = _failing_nicely(lambda: registry.add_asset(section, args.id, entry, replace=args.replace))
    if added is None:
        return 1
    print(f"added {args.kind} {args.id} ({added.kind} {added.location}) to {registry.path}")
    return 0


def _remove(args: argparse.Namespace, settings: Any) -> int:
    section = KINDS[args.kind]
    registry = _failing_nicely(lambda: _registry(settings))
    if registry is None:
        return 1
    if section == "models":
        removed = _failing_nicely(lambda: registry.remove_model(args.id))
    else:
        removed = _failing_nicely(lambda: registry.remove_asset(section, args.id))
    if removed is None:
        return 1
    print(f"removed {args.kind} {args.id} from {registry.path}")
    return 0


def _entry(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The entry as the models file spells it, from the flags (validated by the registry)."""
    is_model = section == "models"
    if args.hub:
        entry: dict[str, Any] = {"kind": "hub", "location": args.hub}
    elif args.folder:
        entry = {"kind": "folder", "location": _absolute(args.folder)}
    else:
        entry = {"kind": "single_file" if is_model else "file", "location": _absolute(args.file)}
    for name in ("revision", "family", "description", "subfolder", "weight_name", "token", "image_encoder"):
        value = getattr(args, name)
        if value is not None:
            entry[name] = value
    if args.config is not None:
        entry["config"] = _absolute(args.config)
    limits = _limits(args)
    if limits:
        if not is_model:
            raise ValueError("limits apply to models only")
        entry["limits"] = limits
    return entry


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if args.limits:
        try:
            limits = json.loads(args.limits)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--limits is not valid JSON: {exc}") from exc
        if not isinstance(limits, dict):
            raise ValueError('--limits must be a JSON object, e.g. {"max_size": 768}')
    limits.update({name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None})
    return limits


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _failing_nicely(action: Callable[[], Any]) -> Any:
    """Run `action`; print the registry's error (bad entry, unknown id, invalid file) and return None."""
    from diffserve.core.errors import DiffserveError
    from diffserve.engine.models.registry import ModelsFileError

    try:
        return action()
    except DiffserveError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
    except ModelsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return None
