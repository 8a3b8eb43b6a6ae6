"""What the engine can apply, as plain data (no torch or diffusers import).

The API process checks requests against these tables at submit time (a request the engine cannot
honour is answered 400 and never queued); the worker's controls read the same tables to act.

Scheduler names are the ModelsLab v6 vocabulary (`core.request.SCHEDULERS`); each supported name
maps to the diffusers class built `from_config` of the model's own scheduler config, plus a few
config overrides. Facts checked on diffusers 0.42:

* DDIMInverseScheduler and IPNDMScheduler have no `add_noise`, so an img2img pipeline cannot
  noise the init image with them (AttributeError in `prepare_latents`).
* KarrasVeScheduler (deprecated, raises NotImplementedError in the pipeline) and
  ScoreSdeVeScheduler (fails in `add_noise`) are for variance-exploding models, not latent
  diffusion: no Stable Diffusion pipeline can run them.
These four are refused at submit with the list of supported names; no silent substitute.

`algorithm_type`: the vendor's only value, "dpmsolver+++", does not exist in diffusers. It is
read as DPM-Solver++ in its SDE form (`sde-dpmsolver++`, "DPM++ 2M SDE" in A1111 terms): the
variant that differs from the schedulers' default `dpmsolver++`, so the field changes the result.
diffusers' own names `dpmsolver++` and `sde-dpmsolver++` are accepted too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

# Every model family the engine knows (engine/families/ has one module each).
FamilyName = Literal["sd", "sdxl", "flux", "flux-kontext", "flux-redux", "flux-canny", "flux-depth", "flux-pulid",
                     "hidream"]


def check_family(name: str) -> str:
    """`name` if it is a model family the engine knows (used to validate entries)."""
    known = get_args(FamilyName)
    if name not in known:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(known)}")
    return name


@dataclass(frozen=True)
class SchedulerSpec:
    cls: str  # diffusers class name
    overrides: tuple[tuple[str, Any], ...] = ()  # on top of the model's scheduler config
    karras: bool = False  # takes use_karras_sigmas
    algorithm: bool = False  # takes algorithm_type (DPM-Solver)

    def config_overrides(self, *, karras: bool, algorithm_type: str | None) -> dict[str, Any]:
        out = dict(self.overrides)
        if self.karras:
            out["use_karras_sigmas"] = karras
        if self.algorithm and algorithm_type:
            out["algorithm_type"] = ALGORITHM_TYPES[algorithm_type]
        return out


_K = {"karras": True}
SCHEDULERS: dict[str, SchedulerSpec] = {
    "DDPMScheduler": SchedulerSpec("DDPMScheduler"),
    "DDIMScheduler": SchedulerSpec("DDIMScheduler"),
    # skip_prk_steps=True: PLMS as Stable Diffusion 1.x configures it (and as A1111's PLMS runs, with no
    # Runge-Kutta warm-up). diffusers' default (False) cannot schedule fewer than 4 steps (ValueError in
    # set_timesteps), and its warm-up steps are the ones img2img's strength cuts off.
    "PNDMScheduler": SchedulerSpec("PNDMScheduler", (("skip_prk_steps", True),)),
    "LMSDiscreteScheduler": SchedulerSpec("LMSDiscreteScheduler", **_K),
    "EulerDiscreteScheduler": SchedulerSpec("EulerDiscreteScheduler", **_K),
    "EulerAncestralDiscreteScheduler": SchedulerSpec("EulerAncestralDiscreteScheduler"),
    "DPMSolverMultistepScheduler": SchedulerSpec("DPMSolverMultistepScheduler", karras=True, algorithm=True),
    "HeunDiscreteScheduler": SchedulerSpec("HeunDiscreteScheduler", **_K),
    "KDPM2DiscreteScheduler": SchedulerSpec("KDPM2DiscreteScheduler", **_K),
    # lower_order_final=True: what diffusers switches to anyway (with a warning) for final sigma 0.
    "DPMSolverSinglestepScheduler": SchedulerSpec(
        "DPMSolverSinglestepScheduler", (("lower_order_final", True),), karras=True, algorithm=True),
    "KDPM2AncestralDiscreteScheduler": SchedulerSpec("KDPM2AncestralDiscreteScheduler", **_K),
    "UniPCMultistepScheduler": SchedulerSpec("UniPCMultistepScheduler", **_K),
    "DEISMultistepScheduler": SchedulerSpec("DEISMultistepScheduler", **_K),
    "LCMScheduler": SchedulerSpec("LCMScheduler"),
}

UNSUPPORTED_SCHEDULERS: dict[str, str] = {
    "DDIMInverseScheduler": "it inverts images into noise and has no add_noise to start from an init image",
    "IPNDMScheduler": "it has no add_noise, so it cannot start from a noised init image",
    "KarrasVeScheduler": "it is deprecated in diffusers and made for variance-exploding models",
    "ScoreSdeVeScheduler": "it is made for variance-exploding score models, not latent diffusion",
}

# Accepted algorithm_type values -> diffusers' algorithm_type.
ALGORITHM_TYPES: dict[str, str] = {
    "dpmsolver+++": "sde-dpmsolver++",
    "dpmsolver++": "dpmsolver++",
    "sde-dpmsolver++": "sde-dpmsolver++",
}


@dataclass(frozen=True)
class FamilyControls:
    """Which of the Stable Diffusion controls a model family takes."""

    schedulers: bool = False  # the v6 scheduler vocabulary applies (UNet + discrete-time schedulers)
    # diffusers reads the text encoder's hidden_states[-(clip_skip + offset)]; None: no clip_skip.
    clip_skip_offset: int | None = None
    tomesd: bool = False  # the UNet has diffusers BasicTransformerBlocks that token merging can patch
    tiling: bool = False  # a UNet and a VAE of Conv2d layers whose padding can wrap around (seamless tiles)
    reference_images: bool = False  # extra images (Qolaba file_urls) beside the init image are used
    needs_face: bool = False  # the init image must show a face (PuLID takes the identity from it)
    # other tasks from the same loaded weights (diffusers from_pipe, engine/families/base.py call_in_mode)
    txt2img: bool = False
    inpaint: bool = False


# Families not listed take none of these controls (their requests with them are refused or,
# for flags whose vendor default is "yes", resolved to "not applied" and shown so in meta).
FAMILY_CONTROLS: dict[str, FamilyControls] = {
    "sd": FamilyControls(schedulers=True, clip_skip_offset=1, tomesd=True, tiling=True, txt2img=True, inpaint=True),
    "sdxl": FamilyControls(schedulers=True, clip_skip_offset=2, tomesd=True, tiling=True, txt2img=True,
                           inpaint=True),
    "flux": FamilyControls(txt2img=True, inpaint=True),
    "flux-kontext": FamilyControls(reference_images=True),  # stitched beside the init image
    "flux-redux": FamilyControls(reference_images=True),  # each one goes through the Redux prior
    "flux-pulid": FamilyControls(needs_face=True),
}


def family_controls(family: str) -> FamilyControls:
    return FAMILY_CONTROLS.get(family, FamilyControls())
