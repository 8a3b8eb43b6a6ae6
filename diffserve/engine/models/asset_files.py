"""Where an asset's weights are on this machine.

`asset_root(entry, ...)` turns a registry entry into a local path: the file itself (file), the
folder (folder), or the snapshot folder of a Hugging Face repo in the HF cache (hub). A hub asset
is read from the cache when the files it needs are there (no network call); otherwise it is
downloaded (only the files it needs), unless the hub is offline, which is an error that says how
to fetch it. Every problem is an InvalidInput naming the request field that asked for the asset.
"""

from __future__ import annotations

from pathlib import Path

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.asset_entries import AssetEntry
from diffserve.engine.models.loading import _offline_from_env, _reason


def asset_root(entry: AssetEntry, *, field: str, name: str, needs: list[str], patterns: list[str],
               offline: bool | None = None, cache_dir: str | None = None) -> Path:
    """The local path of `entry`'s weights.

    name: the asset's id, for messages.
    needs: paths (relative to the folder / repo root) that must exist for the asset to load;
        checked for folder and hub sources.
    patterns: for hub sources, the files to fetch (huggingface_hub allow_patterns).
    offline: None follows HF_HUB_OFFLINE; True never contacts the hub; False may download.
    """
    if entry.kind == "file":
        path = Path(entry.location)
        if not path.is_file():
            raise InvalidInput(f"{field}: file {entry.location} of {name} does not exist", field=field)
        return path
    if entry.kind == "folder":
        root = Path(entry.location)
        if not root.is_dir():
            raise InvalidInput(f"{field}: folder {entry.location} of {name} does not exist", field=field)
        missing = [rel for rel in needs if not (root / rel).exists()]
        if missing:
            raise InvalidInput(f"{field}: {name}: {', '.join(missing)} not found in {entry.location}", field=field)
        return root
    return _hub_snapshot(entry, field=field, name=name, needs=needs, patterns=patterns, offline=offline,
                         cache_dir=cache_dir)


def _hub_snapshot(entry: AssetEntry, *, field: str, name: str, needs: list[str], patterns: list[str],
                  offline: bool | None, cache_dir: str | None) -> Path:
    from huggingface_hub import snapshot_download

    repo = entry.location
    if offline is None and _offline_from_env():
        offline = True
    try:
        cached = Path(snapshot_download(repo, revision=entry.revision, allow_patterns=patterns or None,
                                        cache_dir=cache_dir, local_files_only=True))
        if all((cached / rel).exists() for rel in needs):
            return cached
    except Exception:  # noqa: BLE001 - not (fully) in the cache: fetched below, or reported
        pass
    wanted = ", ".join(needs) or "the repo"
    if offline:
        include = "".join(f' --include "{p}"' for p in patterns)
        fetch = f"hf download {repo}{include}" + (
            f" --revision {entry.revision}" if entry.revision else "")
        raise InvalidInput(
            f"{field}: {name} ({repo}: {wanted}) is not in the Hugging Face cache and the hub is offline; "
            f"fetch it where the hub is reachable (`{fetch}`) or point the entry at a local folder or file",
            field=field)
    try:
        root = Path(snapshot_download(repo, revision=entry.revision, allow_patterns=patterns or None,
                                      cache_dir=cache_dir))
    except Exception as exc:  # noqa: BLE001 - any download failure is the asset being unavailable
        raise InvalidInput(f"{field}: could not download {name} from {repo}: {_reason(exc)}", field=field) from exc
    missing = [rel for rel in needs if not (root / rel).exists()]
    if missing:
        raise InvalidInput(f"{field}: {name}: {', '.join(missing)} not found in {repo}", field=field)
    return root


def inside(*parts: str | None) -> str:
    """Join the non-empty parts of a relative path with '/' ('' when none)."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
