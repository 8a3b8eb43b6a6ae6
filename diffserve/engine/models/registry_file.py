"""The models file on disk: one JSON document, read whole, written atomically under a lock.

    {"models":      {model_id: ModelEntry},
     "loras":       {lora_id: LoraEntry},
     "embeddings":  {embedding_id: EmbeddingEntry},
     "vaes":        {vae_id: VaeEntry},
     "ip_adapters": {ip_adapter_id: IpAdapterEntry}}

Every section is optional. Errors name the file, the section and the entry. Writers take an
exclusive lock (`<file>.lock`, flock) around read-modify-write, so a CLI and a server changing the
file at the same time do not lose each other's change, and replace the file in one rename, so a
reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError


class ModelsFileError(ValueError):
    """The models file cannot be read or does not validate; the message names the entry."""


MAX_ID_LENGTH = 128
# One part of an id: ASCII letters, digits, '.', '_', '-', starting with a letter or digit. Ids are shown by the
# playground and used as folder names (downloads), so nothing else: no markup, no quotes, no '..' part.
_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ID_RULE = "letters, digits and . _ - in parts separated by '/', each part starting with a letter or digit"


def check_entry_id(entry_id: str) -> str | None:
    """Why `entry_id` cannot name an entry (None when it can). Request fields list ids comma-separated.
    Every id of the registry (models file, CLI, API) passes here: `org/name`, `my-model_v1.5`."""
    if not entry_id or entry_id != entry_id.strip():
        return "an id must be non-empty, without leading or trailing spaces"
    if "," in entry_id or any(c.isspace() for c in entry_id):
        return "an id must not contain commas or spaces"
    if len(entry_id) > MAX_ID_LENGTH:
        return f"an id must be at most {MAX_ID_LENGTH} characters"
    if not all(_ID_PART.fullmatch(part) for part in entry_id.split("/")):
        return f"an id may hold only {ID_RULE}"
    return None


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """'loras.my-lora.kind: Input should be ...; ...' (pydantic's locations joined with dots)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def read_raw(path: Path) -> dict:
    """The models file's JSON object (empty when the file does not exist). Raises ModelsFileError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ModelsFileError(f"{path}: cannot read the models file: {exc}") from exc
    try:
        raw = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ModelsFileError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelsFileError(f'{path}: expected an object like {{"models": {{model_id: {{...}}}}, "loras": {{...}}}}')
    return raw


def write_text(path: Path, text: str) -> None:
    """Replace the file's content with `text` in one rename (same folder, same permissions if it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock for read-modify-write of `path` (on `<path>.lock`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced or edited (None when it does not exist)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
