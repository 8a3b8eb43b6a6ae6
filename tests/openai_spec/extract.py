"""Extract the images schemas from OpenAI's OpenAPI spec into images_schemas.json (run by hand, not by tests).

    git --git-dir=<openai/openai-openapi clone> show <commit>:openapi.json > /tmp/openapi.json
    python tests/openai_spec/extract.py /tmp/openapi.json <commit>

Keeps the root schemas below and every schema they reach through $ref, unchanged; records the source (repository,
path, commit, sha256 of the whole openapi.json). tests/test_openai_spec.py pins this file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOTS = ["ImagesResponse", "ImageEditStreamEvent", "ImageGenStreamEvent", "EditImageBodyJsonParam",
         "CreateImageRequest", "CreateImageEditRequest"]
PREFIX = "#/components/schemas/"


def refs(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"][len(PREFIX):]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def main(spec_path: str, commit: str) -> None:
    raw = Path(spec_path).read_bytes()
    schemas = json.loads(raw)["components"]["schemas"]
    keep, todo = {}, list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = schemas[name]
            todo.extend(refs(schemas[name]))
    out = {"source": {"repository": "https://github.com/openai/openai-openapi", "path": "openapi.json",
                      "commit": commit, "sha256": hashlib.sha256(raw).hexdigest()},
           "components": {"schemas": dict(sorted(keep.items()))}}
    Path(__file__).with_name("images_schemas.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
