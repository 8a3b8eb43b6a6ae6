"""What a model family is, as plain data: one `FamilySpec` per family (one module each in this folder), listed
once in `specs/__init__.py`.

Torch-free: the API process reads the specs (the family names a models file may use, the controls a
request may ask for, the built-in models and their limits). The worker-side parts -- the pipeline's load
and call (`engine/families/<f>.py`), the batched loop (`engine/families/<f>_batch.py`) and the tiny
builder (`engine/tiny/<f>.py`) -- are named as `"module:attribute"` and imported only where they run
(`engine.families.family` / `batch_loop`, `TinyBuild.build`), the way Python's entry points name objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from pkgutil import resolve_name

from diffserve.core.request import ModelLimits


@dataclass(frozen=True)
class FamilyControls:
    """Which of the Stable Diffusion controls a model family takes (the default: none of them)."""

    schedulers: bool = False  # the v6 scheduler vocabulary applies (UNet + discrete-time schedulers)
    # diffusers reads the text encoder's hidden_states[-(clip_skip + offset)]; None: no clip_skip.
    clip_skip_offset: int | None = None
    tomesd: bool = False  # the UNet has diffusers BasicTransformerBlocks that token merging can patch
    tiling: bool = False  # a UNet and a VAE of Conv2d layers whose padding can wrap around (seamless tiles)
    reference_images: bool = False  # extra images (Qolaba file_urls) beside the init image are used
    needs_face: bool = False  # the init image must show a face (PuLID takes the identity from it)
    # other tasks from the same loaded weights (diffusers from_pipe, engine/families/base.py call_in_mode)
    # the step cache method its batched loop implements (core/step_cache.py): deepcache (UNet), fbcache (Flux)
    step_cache: str | None = None
    txt2img: bool = False
    inpaint: bool = False


@dataclass(frozen=True)
class TinyBuild:
    """The family's random-weight tiny model, built offline on first use (tests, demos, a laptop)."""

    model_id: str  # its built-in model id, and its folder's name under the models directory
    builder: str  # "module:function" in engine/tiny: builder(dest folder) -> the folder, built once
    limits: ModelLimits
    title: str  # what it is a tiny copy of ("Stable Diffusion XL img2img"), for its description

    @property
    def description(self) -> str:
        return f"Tiny {self.title} built offline with random weights: its images are noise."

    def build(self, dest: Path) -> Path:
        """Build the model into the folder `dest` (returns at once when it is already built there); `dest`."""
        return resolve_name(self.builder)(Path(dest))


@dataclass(frozen=True)
class VendorModel:
    """Another built-in model id served on the family's tiny build, with a vendor page's limits
    (a models file entry of that id points it at real weights)."""

    model_id: str
    limits: ModelLimits
    description: str


@dataclass(frozen=True)
class FamilySpec:
    """One model family: everything the rest of the server asks of it."""

    name: str  # the `family` of a models file entry
    # "module:Class" in engine/families: load(source, device, dtype) -> pipeline; run(pipe, inputs) -> images
    pipeline: str
    controls: FamilyControls = field(default_factory=FamilyControls)
    # "module:Class" in engine/families: the step-level batched img2img loop; None: requests run one at a time
    batch_loop: str | None = None
    # precision rule: on CUDA, dtype "auto" is bfloat16 always (trained in it; float16 overflows)
    bf16: bool = False
    # the limits of a real model of the family, where its registration gives none (management's load_model)
    limits: ModelLimits = field(default_factory=ModelLimits)
    tiny: TinyBuild | None = None
    vendor_models: tuple[VendorModel, ...] = ()
    # models file fields only this family takes (flux-depth: depth_model)
    entry_fields: frozenset[str] = frozenset()
