"""A1111's infotext (the `parameters` PNG text chunk): prompt, `Negative prompt: ...`, then one line of
`Key: value` pairs. Parsed as A1111's parse_generation_parameters reads it (values kept as text; `Size` also split
into `Size-1` and `Size-2`)."""

from __future__ import annotations

import json
import re

PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
MAX_PARAMS_LINE = 64 * 1024  # longer is not an infotext line: nothing is parsed from it


def parse_parameters(text: str) -> dict[str, str]:
    """{"Prompt", "Negative prompt", each Key: value of the last line}; {} for no text."""
    if not text.strip():
        return {}
    *lines, last = text.strip().split("\n")
    pairs = PARAM.findall(last) if len(last) <= MAX_PARAMS_LINE else []
    if len(pairs) < 3:  # A1111's rule: a last line with fewer pairs is part of the prompt
        lines.append(last)
        pairs = []
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        if value.startswith('"') and value.endswith('"') and len(value) > 1:
            try:
                value = json.loads(value)
            except ValueError:
                pass
        result[key.strip()] = value.strip() if isinstance(value, str) else str(value)
        size = re.fullmatch(r"(\d+)x(\d+)", result[key.strip()]) if key.strip() == "Size" else None
        if size:
            result["Size-1"], result["Size-2"] = size.group(1), size.group(2)
    return result
