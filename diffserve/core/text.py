"""Text a client sent must be valid Unicode: JSON's `"\\ud800"` escape decodes to a lone surrogate, a
Python string that cannot be written as UTF-8 (not to the database, not into a JSON answer, not to a
tokenizer). Such text is refused where a request is read, naming where it was.

Cheap on large bodies: an ASCII string (every base64 image) is recognised in O(1) by `str.isascii`, and only
the other strings are encoded once.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from diffserve.core.errors import InvalidInput


def is_valid_text(text: str) -> bool:
    """False when `text` holds a lone surrogate (it cannot be encoded as UTF-8)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """`text` with any lone surrogate written as its escape (`\\ud800`): safe in any answer or log."""
    return text if is_valid_text(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def invalid_text_path(value: Any, path: str = "") -> str | None:
    """Where in a decoded JSON value (dicts, lists, strings; keys too) a lone surrogate sits, e.g.
    `prompt` or `init_images[2]`; None when every string is valid. Breadth first (a top-level field is named
    before a nested one) and iterative: no depth limit of its own."""
    if isinstance(value, str):  # the common case (a request's every text field is checked): no queue
        return None if is_valid_text(value) else (path or "body")
    if not isinstance(value, (dict, list)):
        return None
    queue: deque[tuple[Any, str]] = deque([(value, path)])
    while queue:
        item, where = queue.popleft()
        if isinstance(item, str):
            if not is_valid_text(item):
                return where or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and not is_valid_text(key):
                    return printable(name)
                queue.append((child, name))
        elif isinstance(item, list):
            queue.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def check_text(value: Any, path: str = "") -> None:
    """Raise InvalidInput naming the field when `value` holds text that is not valid Unicode."""
    where = invalid_text_path(value, path)
    if where is not None:
        raise InvalidInput(f"{where}: the text holds a lone UTF-16 surrogate (e.g. \\ud800), which is not valid "
                           f"Unicode", field=where)
