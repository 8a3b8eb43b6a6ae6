"""A1111 sampler and schedule-type names -> diffusers schedulers, in one table.

A1111 names a sampler (`sampler_name`) and, since 1.9, a schedule type (`scheduler`); older clients put
the schedule in the sampler's name ("DPM++ 2M Karras"). Each name with a diffusers equivalent maps to the
scheduler class diffserve builds from the model's own config (engine/models/capabilities.py), plus the
DPM-Solver variant where A1111's name says SDE. Names without an equivalent (DPM++ 2S a, DPM++ SDE, DPM
fast, DPM adaptive, Restart...) are refused with the list of valid ones, never replaced silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.capabilities import SCHEDULERS


@dataclass(frozen=True)
class Sampler:
    scheduler: str  # diffusers class
    algorithm_type: str | None = None
    aliases: tuple[str, ...] = ()
    uses_ensd: bool = False  # draws eta noise between steps: A1111's infotext names eta_noise_seed_delta (ENSD)


SAMPLERS: dict[str, Sampler] = {
    "Euler a": Sampler("EulerAncestralDiscreteScheduler", aliases=("k_euler_a", "k_euler_ancestral"),
                       uses_ensd=True),
    "Euler": Sampler("EulerDiscreteScheduler", aliases=("k_euler",)),
    "LMS": Sampler("LMSDiscreteScheduler", aliases=("k_lms",)),
    "Heun": Sampler("HeunDiscreteScheduler", aliases=("k_heun",)),
    "DPM2": Sampler("KDPM2DiscreteScheduler", aliases=("k_dpm_2",)),
    "DPM2 a": Sampler("KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a",), uses_ensd=True),
    "DPM++ 2M": Sampler("DPMSolverMultistepScheduler", aliases=("k_dpmpp_2m",)),
    "DPM++ 2M SDE": Sampler("DPMSolverMultistepScheduler", "sde-dpmsolver++", aliases=("k_dpmpp_2m_sde",),
                            uses_ensd=True),
    "DDIM": Sampler("DDIMScheduler"),
    "PLMS": Sampler("PNDMScheduler"),
    "UniPC": Sampler("UniPCMultistepScheduler"),
    "DEIS": Sampler("DEISMultistepScheduler"),
    "LCM": Sampler("LCMScheduler"),
    "DDPM": Sampler("DDPMScheduler"),
}
SCHEDULE_TYPES = {"automatic": "Automatic", "karras": "Karras"}  # name -> label


@dataclass(frozen=True)
class Choice:
    scheduler: str
    karras: bool
    algorithm_type: str | None
    sampler_name: str
    schedule: str


def choose(sampler_name: str | None, schedule: str | None) -> Choice:
    """(diffusers scheduler, karras sigmas, DPM-Solver variant) for an A1111 sampler and schedule type."""
    name = (sampler_name or "Euler a").strip()
    karras = False
    if name.lower().endswith(" karras"):  # the pre-1.9 spelling
        name, karras = name[: -len(" karras")].strip(), True
    by_name = {n.lower(): n for n in SAMPLERS} | {a: n for n, s in SAMPLERS.items() for a in s.aliases}
    canonical = by_name.get(name.lower())
    if canonical is None:
        raise InvalidInput(f"sampler_name {sampler_name!r} has no diffusers equivalent here; valid: "
                           f"{', '.join(SAMPLERS)} (add ' Karras' or scheduler='karras' for Karras sigmas)",
                           field="sampler_name")
    schedule_name = (schedule or "automatic").strip().lower()
    if schedule_name not in SCHEDULE_TYPES:
        raise InvalidInput(f"scheduler {schedule!r} is not supported; valid: {', '.join(SCHEDULE_TYPES)}",
                           field="scheduler")
    karras = karras or schedule_name == "karras"
    sampler = SAMPLERS[canonical]
    if karras and not SCHEDULERS[sampler.scheduler].karras:
        raise InvalidInput(f"{canonical} has no Karras schedule (diffusers' {sampler.scheduler}); use scheduler "
                           f"'automatic'", field="scheduler")
    return Choice(sampler.scheduler, karras, sampler.algorithm_type, canonical, "karras" if karras else "automatic")
