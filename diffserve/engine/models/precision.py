"""Which floating-point type a model runs in, and the device memory it may use.

`DIFFSERVE_DTYPE` (or a model's `dtype` in models.json) is one of:

* `auto` (default): on the CPU bfloat16 where it computes bfloat16 natively (x86: the AVX512_BF16 or AMX_BF16
  flags; aarch64: BF16), else float32 (torch runs bfloat16 on any CPU, but emulated it is slower than float32);
  on CUDA bfloat16 where the GPU supports it (Ampere and newer), else float16 -- and the families whose spec
  says `bf16` (Flux, HiDream: trained in it; float16 overflows them) always bfloat16;
* `fp32`, `fp16`, `bf16`: that type, whatever the device.

The VAE follows the model's type, as diffusers loads it. SDXL's original VAE overflows in float16;
diffusers' SDXL pipelines handle it themselves: when the VAE is float16 and its config says
`force_upcast: true` (the original SDXL VAE does), they run the VAE in float32 for that call (encode
and decode) and put it back after. A VAE fixed for float16 (e.g. madebyollin/sdxl-vae-fp16-fix, whose
config says `force_upcast: false`) stays float16. bfloat16 has float32's range: no upcast is needed.

Torch-free at import: the API process reads the names; torch is imported when a type is resolved.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from diffserve.engine.models.specs import family_spec

DtypeSetting = Literal["auto", "fp32", "fp16", "bf16"]
DtypeName = Literal["fp32", "fp16", "bf16"]
TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
X86_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo "flags" of x86 CPUs with bfloat16 instructions


def native_bf16(flags: Iterable[str], machine: str) -> bool:
    """Whether a CPU with these feature flags (/proc/cpuinfo's "flags" on x86, "Features" on Arm) and this
    platform.machine() computes bfloat16 in hardware: x86 AVX512_BF16 or AMX_BF16; aarch64 BF16."""
    flags = {f.lower() for f in flags}
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return bool(flags & X86_BF16_FLAGS)
    if machine in ("aarch64", "arm64"):
        return "bf16" in flags
    return False


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first processor's feature flags from /proc/cpuinfo (Linux); empty where there is none."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def resolve_dtype(setting: str, family: str, device: str, *, cpu_bf16: bool | None = None) -> DtypeName:
    """The type a model of `family` runs in on `device` under `setting` (auto | fp32 | fp16 | bf16).
    cpu_bf16: whether the CPU computes bfloat16 natively (None: read /proc/cpuinfo)."""
    if setting in TORCH_NAMES:
        return setting  # type: ignore[return-value]
    if setting != "auto":
        raise ValueError(f"dtype must be one of auto, fp32, fp16, bf16; got {setting!r}")
    if device == "cpu" or device.startswith("cpu:"):
        if cpu_bf16 is None:
            cpu_bf16 = native_bf16(cpu_flags(), platform.machine())
        return "bf16" if cpu_bf16 else "fp32"
    if not device.startswith("cuda"):
        return "fp32"
    if family_spec(family).bf16:
        return "bf16"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, TORCH_NAMES[name])


def itemsize(name: str) -> int:
    return {"fp32": 4, "fp16": 2, "bf16": 2}[name]
