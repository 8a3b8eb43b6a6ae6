"""Which floating-point type a model runs in, and the device memory it may use.

`DIFFSERVE_DTYPE` (or a model's `dtype` in models.json) is one of:

* `auto` (default): float32 on the CPU; on CUDA bfloat16 where the GPU supports it (Ampere and newer),
  else float16 -- and Flux / HiDream always bfloat16 (they were trained in it; float16 overflows them);
* `fp32`, `fp16`, `bf16`: that type, whatever the device.

The VAE follows the model's type, as diffusers loads it. SDXL's original VAE overflows in float16;
diffusers' SDXL pipelines handle it themselves: when the VAE is float16 and its config says
`force_upcast: true` (the original SDXL VAE does), they run the VAE in float32 for that call (encode
and decode) and put it back after. A VAE fixed for float16 (e.g. madebyollin/sdxl-vae-fp16-fix, whose
config says `force_upcast: false`) stays float16. bfloat16 has float32's range: no upcast is needed.

Torch-free at import: the API process reads the names; torch is imported when a type is resolved.
"""

from __future__ import annotations

from typing import Any, Literal

DtypeSetting = Literal["auto", "fp32", "fp16", "bf16"]
DtypeName = Literal["fp32", "fp16", "bf16"]
TORCH_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
BF16_FAMILIES = {"flux", "flux-kontext", "flux-redux", "flux-canny", "flux-depth", "flux-pulid", "hidream"}


def resolve_dtype(setting: str, family: str, device: str) -> DtypeName:
    """The type a model of `family` runs in on `device` under `setting` (auto | fp32 | fp16 | bf16)."""
    if setting in TORCH_NAMES:
        return setting  # type: ignore[return-value]
    if setting != "auto":
        raise ValueError(f"dtype must be one of auto, fp32, fp16, bf16; got {setting!r}")
    if not device.startswith("cuda"):
        return "fp32"
    if family in BF16_FAMILIES:
        return "bf16"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, TORCH_NAMES[name])


def itemsize(name: str) -> int:
    return {"fp32": 4, "fp16": 2, "bf16": 2}[name]
