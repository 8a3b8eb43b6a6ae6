"""Qolaba app ids -> local models, with the sizes each app allows (from the vendor's img2img page).

An operator maps or remaps any app with `DIFFSERVE_QOLABA_APPS` (settings.dialects.qolaba_apps), e.g.
`{"ap-hTjXy7qplkzvnmwqrsdabc": "my-sdxl"}` serves Ideogram Remix with a local model, and
`{"ap-gFhLq9zvbnmopxkytswabc": {"model": "tiny-flux-redux", "sizes": ["64x64"]}}` also replaces the
allowed sizes ("HEIGHTxWIDTH"; an empty list lets the output follow the input image). An app with no
model (a closed model, or one diffusers has no pipeline for) answers "Service Not Found".
"""

from __future__ import annotations

from dataclasses import dataclass

from diffserve.config import QolabaApp
from diffserve.core.errors import NotFound

# The page lists sizes as "HEIGHTxWIDTH" ("the following combinations of height and width").
IDEOGRAM_SIZES = ("720x1280", "960x1280", "1024x1024", "1280x960", "1280x720")
REDUX_SIZES = ("720x1280", "800x1000", "1024x1024", "1280x720", "1600x676")
PULID_SIZES = ("1024x1024", "800x1000", "720x1280", "1280x720", "1600x676")
GPT_IMAGE_SIZES = ("1024x1536", "1024x1024", "1536x1024")
KONTEXT_SIZES = ("630x1470", "900x1200", "1024x1024", "1280x720", "1470x630")
CLOSED = "a closed model that only its vendor can run"


@dataclass(frozen=True)
class AppSpec:
    name: str
    model: str | None  # default local model; None: not served unless an operator maps it
    sizes: tuple[str, ...] = ()  # allowed HEIGHTxWIDTH; empty: the output takes the input image's size
    unavailable: str = ""  # why there is no default model


APPS: dict[str, AppSpec] = {
    "ap-fGhKl3mfkdlpqrshuwwabc": AppSpec("Flux Dev", "tiny-flux"),
    "ap-hTjXy7qplkzvnmwqrsdabc": AppSpec("Ideogram Remix", None, IDEOGRAM_SIZES, CLOSED),
    "ap-gFhLq9zvbnmopxkytswabc": AppSpec("Flux Redux", "tiny-flux-redux", REDUX_SIZES),
    "ap-mNqZx4rtyjvbcfghwklpde": AppSpec("Flux Canny", "tiny-flux-canny"),
    "ap-gWfZx8rjvtyqopmnbcdehij": AppSpec("Flux Depth", "tiny-flux-depth"),
    "ap-hJkLm8nqwertyuiopasdfg": AppSpec("Flux PuLID", "tiny-flux-pulid", PULID_SIZES),
    "ap-zuzhawbgipcrnxdtefhjbnvhc": AppSpec("GPT Image", None, GPT_IMAGE_SIZES, CLOSED),
    "ap-tK7gR4jP9sWbC1mNfE8uVzH2": AppSpec("Flux Kontext Max", "tiny-flux-kontext", KONTEXT_SIZES),
}


class ServiceNotFound(NotFound):
    """No local model serves this app_id (Qolaba's "Service Not Found")."""


@dataclass(frozen=True)
class ResolvedApp:
    app_id: str
    name: str
    model_id: str
    sizes: tuple[tuple[int, int], ...]  # (height, width) pairs; empty: follow the input image


def resolve_app(app_id: str, overrides: dict[str, QolabaApp]) -> ResolvedApp:
    spec = APPS.get(app_id)
    override = overrides.get(app_id)
    if override is not None:
        sizes = tuple(override.sizes) if override.sizes is not None else (spec.sizes if spec else ())
        return ResolvedApp(app_id, spec.name if spec else app_id, override.model, _parse_sizes(sizes))
    if spec is None:
        raise ServiceNotFound(f"No service for app_id {app_id!r}")
    if spec.model is None:
        raise ServiceNotFound(f"{spec.name} (app_id {app_id}) is not available here: {spec.unavailable}. "
                              "The operator can map it to a local model with DIFFSERVE_QOLABA_APPS.")
    return ResolvedApp(app_id, spec.name, spec.model, _parse_sizes(spec.sizes))


def _parse_sizes(sizes: tuple[str, ...] | list[str]) -> tuple[tuple[int, int], ...]:
    """"HEIGHTxWIDTH" strings (the operator's are checked when the settings load) -> (height, width)."""
    return tuple((int(h), int(w)) for h, _, w in (text.lower().partition("x") for text in sizes))


def sizes_text(sizes: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{h}x{w}" for h, w in sizes)
