"""What the engine can apply, as plain data (no torch or diffusers import): the schedulers, and each
family's controls (read from its spec, engine/models/specs/).

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
from typing import Any

from diffserve.engine.models.specs import FamilyControls, family_spec

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


def family_controls(family: str) -> FamilyControls:
    """Which controls the family takes (its spec, engine/models/specs/)."""
    return family_spec(family).controls
