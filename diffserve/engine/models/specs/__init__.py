"""Every model family the engine knows: one spec each (a module in this folder), in one list.

Adding a family: its spec module here plus one line in FAMILIES (and the code its spec names: the
pipeline call in engine/families, a tiny builder in engine/tiny, optionally a batched loop).
"""

from __future__ import annotations

from diffserve.engine.models.specs import (flux, flux_canny, flux_depth, flux_kontext, flux_pulid, flux_redux, hidream,
                                           sd, sdxl)
from diffserve.engine.models.specs.base import FamilyControls, FamilySpec, TinyBuild, VendorModel

__all__ = ["FAMILIES", "FamilyControls", "FamilySpec", "TinyBuild", "VendorModel", "check_family", "family_spec",
           "tiny_build"]

FAMILIES: tuple[FamilySpec, ...] = (
    sd.SPEC,
    sdxl.SPEC,
    flux.SPEC,
    flux_kontext.SPEC,
    flux_redux.SPEC,
    flux_canny.SPEC,
    flux_depth.SPEC,
    flux_pulid.SPEC,
    hidream.SPEC,
)


def family_spec(name: str) -> FamilySpec:
    """The spec of the family called `name`; ValueError naming the known ones otherwise."""
    for spec in FAMILIES:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown family {name!r}; known: {', '.join(spec.name for spec in FAMILIES)}")


def check_family(name: str) -> str:
    """`name` if it is a model family the engine knows (validates models file entries)."""
    return family_spec(name).name


def tiny_build(model_id: str) -> TinyBuild | None:
    """The tiny build whose built-in model id is `model_id` (None: no family builds one of that id)."""
    return next((spec.tiny for spec in FAMILIES if spec.tiny and spec.tiny.model_id == model_id), None)
