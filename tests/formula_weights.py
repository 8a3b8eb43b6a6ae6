"""Deterministic weights and inputs from a formula (no RNG: the same numbers on any machine and torch
version), for golden-number tests recorded from a reference implementation run.

A tensor's values depend only on its parameter name and shape (a CRC of the name salts a sine hash), so
two implementations with the same parameter names get the same weights whatever order they register them in.
"""

from __future__ import annotations

import math
import zlib

import torch


def formula_values(shape: tuple[int, ...], salt: int) -> torch.Tensor:
    """float64 values spread over [-1, 1] (a sine hash of the flat index and `salt`)."""
    i = torch.arange(math.prod(shape), dtype=torch.float64)
    return (torch.frac(torch.sin(i * 12.9898 + salt * 78.233).abs() * 43758.5453) * 2 - 1).view(shape)


def formula_state(reference: dict[str, torch.Tensor], scales: dict[str, float] | None = None
                  ) -> dict[str, torch.Tensor]:
    """float32 weights for every tensor of a state dict: `scales[name] * s` for the named ones; 1-D
    `*weight` (norm scales) 1 + 0.2 s; other 1-D (biases) 0.1 s; matrices and kernels s * sqrt(3 / fan_in),
    fan_in = numel / shape[0] (unit-variance outputs for unit-variance inputs)."""
    scales = scales or {}
    out = {}
    for key, like in reference.items():
        s = formula_values(tuple(like.shape), zlib.crc32(key.encode()) % 100_003)
        if key in scales:
            value = scales[key] * s
        elif like.ndim == 1 and key.endswith("weight"):
            value = 1.0 + 0.2 * s
        elif like.ndim <= 1:
            value = 0.1 * s
        else:
            value = s * math.sqrt(3.0 / (like.numel() // like.shape[0]))
        out[key] = value.to(torch.float32)
    return out


def formula_input(*shape: int, salt: int = 0, scale: float = 1.0) -> torch.Tensor:
    """A smooth-ish float32 input (sines of the flat index), amplitude `scale`."""
    i = torch.arange(math.prod(shape), dtype=torch.float64)
    return (scale * torch.sin(0.37 * i + 0.11 * salt) * torch.cos(0.013 * i + 0.7 * salt)).view(shape).to(torch.float32)
