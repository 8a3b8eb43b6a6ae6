"""Optional speed-ups of a loaded pipeline, off by default, switched on per model in models.json.

* `channels_last: true` -- the UNet's weights (and so its convolutions) in NHWC layout, which cuDNN's
  tensor-core kernels prefer; no effect on transformer families.
* `compile: true` -- `torch.compile` of the UNet / transformer forward, in place (`nn.Module.compile`), so
  the module keeps its type, parameter names and hooks: LoRA, IP-Adapter and PuLID keep working. The
  first call at a new size compiles (tens of seconds on a GPU); the engine warms up once at load at the
  model's default size. A later request at another size (or batch size) recompiles once for it
  (`dynamic=None`: torch marks a dimension dynamic after it changes once, so a third size is cheap);
  `torch._dynamo.config.cache_size_limit` bounds how many variants are kept.

The backend and mode come from the server's settings (DIFFSERVE_COMPILE_BACKEND, default `inductor`,
which needs a C compiler; DIFFSERVE_COMPILE_MODE, e.g. `max-autotune`).
"""

from __future__ import annotations

from typing import Any

import torch


def denoiser(pipe: Any) -> torch.nn.Module | None:
    """The UNet or transformer of a diffusers pipeline."""
    for name in ("unet", "transformer"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def apply_speedups(pipe: Any, *, compile: bool, channels_last: bool, backend: str = "inductor",
                   mode: str | None = None) -> list[str]:
    """Apply the switched-on speed-ups to `pipe` in place; the names of those applied."""
    applied = []
    unet = getattr(pipe, "unet", None)
    if channels_last and isinstance(unet, torch.nn.Module):
        unet.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    module = denoiser(pipe)
    if compile and module is not None:
        module.compile(backend=backend, mode=mode, fullgraph=False)
        applied.append(f"compile:{backend}")
    return applied
