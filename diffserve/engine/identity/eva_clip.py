"""EVA02-CLIP-L-14-336's vision tower, as PuLID-FLUX uses it (its `visual` module).

Written in this project from the architecture's facts (the reference is the `eva_clip` package PuLID
vendors: `eva_vit_model.py`, `rope.py`, `model.py`, `factory.py`, `constants.py`,
`model_configs/EVA02-CLIP-L-14-336.json`). The real tower:

* input 336 x 336 RGB, normalised with OpenAI CLIP's mean/std; 14 x 14 patches (Conv2d with bias)
  → a 24 x 24 grid = 576 patch tokens, plus one class token in front (577 tokens), plus a learned
  absolute position embedding over all 577;
* 24 pre-norm blocks of width 1024, 16 heads of 64, every LayerNorm with eps 1e-6:
  `x += attn(norm1(x)); x += mlp(norm2(x))` (no layer scale, no post-norm);
* attention: separate q/k/v projections without bias, then a learned bias on q and on v only (k has
  none); 2-D rotary embedding on q and k of the patch tokens (never the class token); softmax
  attention with scale head_dim ** -0.5; a LayerNorm over the merged heads ("sub-LN",
  `inner_attn_ln`) before the output projection;
* RoPE layout: in each head, channels [0, 32) rotate with the patch's row, channels [32, 64) with
  its column; within each half, adjacent channels (2j, 2j+1) form one rotated pair with frequency
  theta ** (-2j / 32), theta = 10000; positions are interpolated from the 16 x 16 pre-training
  grid: row r of the 24-row grid sits at r * 16 / 24. Patch tokens are in row-major order;
* MLP: SwiGLU with sub-LN: `w3(ffn_ln(silu(w1(x)) * w2(x)))`, hidden width int(1024 * 2.6667) = 2730;
* output: the final LayerNorm (`norm`) of the class token, projected by `head` (Linear 1024 → 768,
  with bias). Not L2-normalised here (PuLID does that itself);
* hidden states (what PuLID's IDFormer takes): the token sequence *entering* blocks 4, 8, 12, 16
  and 20 (= after 4, 8, ..., 20 blocks), class token included: five (b, 577, 1024) tensors.

Parameter count of the tower: 304,432,832 (`REAL_PARAMETER_COUNT`; each block 12,602,024).

The weights file PuLID loads is QuanSun/EVA-CLIP's `EVA02_CLIP_L_336_psz14_s6B.pt`: the whole
CLIP's state dict (keys `visual.*`, `text.*`, `logit_scale`), possibly under a `model` / `module` /
`state_dict` entry or with a `module.` prefix (the reference loader accepts all of these). It may
carry the RoPE tables as buffers (`visual.rope.freqs_cos/sin` and one copy per block,
`visual.blocks.<i>.attn.rope.freqs_cos/sin`); the reference deletes those before loading and uses
tables it computes, and so does this module: here the tables are not state at all but computed
from the config on every forward (a 576 x 64 table, negligible next to the tower).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REAL_PARAMETER_COUNT = 304_432_832

# The RoPE tables a reference checkpoint may carry (derived constants, dropped on load).
_ROPE_BUFFER = re.compile(r"^(?:blocks\.\d+\.attn\.)?rope\.freqs_(?:cos|sin)$")
# Wrappers the reference loader looks into, in its order.
_WRAPPERS = ("model", "module", "state_dict")


@dataclass(frozen=True)
class EvaVisionConfig:
    """Hyper-parameters of the tower; the defaults are EVA02-CLIP-L-14-336's visual tower."""

    image_size: int = 336
    patch_size: int = 14
    in_channels: int = 3
    width: int = 1024
    depth: int = 24
    head_width: int = 64  # heads = width // head_width
    mlp_ratio: float = 2.6667  # SwiGLU hidden width = int(width * mlp_ratio)
    qkv_bias: bool = True  # learned biases on q and v (k never has one)
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_pt_grid: int = 16  # the grid side the RoPE positions were trained on (224 / 14)
    rope_interpolate: bool = True  # positions scaled onto the pre-training grid
    embed_dim: int = 768  # output of `head`
    # Hidden states returned: the sequence entering each of these blocks (0-based).
    hidden_state_blocks: tuple[int, ...] = (4, 8, 12, 16, 20)
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    def __post_init__(self) -> None:
        for name in ("hidden_state_blocks", "image_mean", "image_std"):  # lists from JSON
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.head_width:
            problems.append(f"width {self.width} is not a multiple of head_width {self.head_width}")
        elif self.head_width % 4:
            problems.append(f"head_width {self.head_width} is not a multiple of 4 (2-D RoPE rotates pairs per axis)")
        if not self.rope_interpolate and self.grid != self.rope_pt_grid:
            problems.append(f"without rope_interpolate the patch grid ({self.grid}) must be rope_pt_grid "
                            f"({self.rope_pt_grid})")
        if any(not 0 < b < self.depth for b in self.hidden_state_blocks):
            problems.append(f"hidden_state_blocks {self.hidden_state_blocks} must lie in 1..{self.depth - 1}")
        if list(self.hidden_state_blocks) != sorted(set(self.hidden_state_blocks)):
            problems.append(f"hidden_state_blocks {self.hidden_state_blocks} must be increasing")
        if len(self.image_mean) != self.in_channels or len(self.image_std) != self.in_channels:
            problems.append("image_mean and image_std need one value per input channel")
        if problems:
            raise ValueError("EvaVisionConfig: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def heads(self) -> int:
        return self.width // self.head_width

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    @classmethod
    def tiny(cls) -> "EvaVisionConfig":
        """A few-thousand-parameter tower of the same form, for tests and offline tiny models:
        a 4 x 4 patch grid, 2 heads, 6 blocks, hidden states entering blocks 1..5 (five, like
        the real tower's)."""
        return cls(image_size=28, patch_size=7, width=32, depth=6, head_width=16, embed_dim=16,
                   hidden_state_blocks=(1, 2, 3, 4, 5))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "EvaVisionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"EvaVisionConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**raw)


# --------------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------------


def eva_rope_tables(cfg: EvaVisionConfig, *, device=None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (num_patches, head_width): the rotation angles of every patch token (row-major)
    and channel. Computed in float32, then cast to `dtype`."""
    half = cfg.head_width // 2  # channels per axis
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, half, 2, device=device, dtype=torch.float32) / half))
    if cfg.rope_interpolate:
        pos = torch.arange(cfg.grid, device=device, dtype=torch.float32) / cfg.grid * cfg.rope_pt_grid
    else:
        pos = torch.arange(cfg.grid, device=device, dtype=torch.float32)
    angle = (pos[:, None] * inv_freq[None, :]).repeat_interleave(2, dim=-1)  # (grid, half): pair-wise
    rows = angle[:, None, :].expand(cfg.grid, cfg.grid, half)  # the row's angles, for every column
    cols = angle[None, :, :].expand(cfg.grid, cfg.grid, half)  # the column's angles, for every row
    table = torch.cat((rows, cols), dim=-1).reshape(cfg.num_patches, 2 * half)
    return table.cos().to(dtype), table.sin().to(dtype)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) → (-x1, x0, -x3, x2, ...): the 90° turn of each adjacent channel pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def _apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """t: (b, heads, 1 + patches, head_width); the class token (position 0) is left as it is."""
    patches = t[:, :, 1:]
    patches = patches * cos + _rotate_pairs(patches) * sin
    return torch.cat((t[:, :, :1], patches), dim=2)


# --------------------------------------------------------------------------------------------
# Modules (parameter names follow the reference's `visual` module)
# --------------------------------------------------------------------------------------------


class EvaAttention(nn.Module):
    def __init__(self, cfg: EvaVisionConfig) -> None:
        super().__init__()
        w = cfg.width
        self.heads = cfg.heads
        self.q_proj = nn.Linear(w, w, bias=False)
        self.k_proj = nn.Linear(w, w, bias=False)
        self.v_proj = nn.Linear(w, w, bias=False)
        if cfg.qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(w))
            self.v_bias = nn.Parameter(torch.zeros(w))
        else:
            self.register_parameter("q_bias", None)
            self.register_parameter("v_bias", None)
        self.inner_attn_ln = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.proj = nn.Linear(w, w)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = F.linear(x, self.q_proj.weight, self.q_bias)
        k = F.linear(x, self.k_proj.weight)
        v = F.linear(x, self.v_proj.weight, self.v_bias)
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(self.inner_attn_ln(out.transpose(1, 2).reshape(b, n, -1)))


class EvaSwiGLU(nn.Module):
    def __init__(self, cfg: EvaVisionConfig) -> None:
        super().__init__()
        w, h = cfg.width, cfg.mlp_hidden
        self.w1 = nn.Linear(w, h)
        self.w2 = nn.Linear(w, h)
        self.ffn_ln = nn.LayerNorm(h, eps=cfg.norm_eps)
        self.w3 = nn.Linear(h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class EvaBlock(nn.Module):
    def __init__(self, cfg: EvaVisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = EvaAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = EvaSwiGLU(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class EvaPatchEmbed(nn.Module):
    def __init__(self, cfg: EvaVisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.width, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)  # (b, patches, width), row-major


class EvaVisionTransformer(nn.Module):
    """The tower. `forward(pixels)` → `(embedding, hidden_states)`: embedding (b, embed_dim), the projected
    class token (not normalised); hidden_states, one (b, 1 + patches, width) tensor per entry of
    `cfg.hidden_state_blocks`. Inference only (no dropout, drop-path or patch dropout)."""

    def __init__(self, cfg: EvaVisionConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or EvaVisionConfig()
        self.cfg = cfg
        self.patch_embed = EvaPatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.width))
        self.blocks = nn.ModuleList(EvaBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.width, cfg.embed_dim)
        # random (not zero) starting tokens, so a freshly built tiny tower is position-aware
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def rope_tables(self, device=None, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return eva_rope_tables(self.cfg, device=device or self.pos_embed.device,
                               dtype=dtype or self.pos_embed.dtype)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        cfg = self.cfg
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
            raise ValueError(f"EVA-CLIP vision tower: pixels must be (batch, {want[0]}, {want[1]}, {want[2]}), "
                             f"got {tuple(pixels.shape)}")
        x = self.patch_embed(pixels.to(self.pos_embed.dtype))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        cos, sin = self.rope_tables(x.device, x.dtype)
        keep = set(cfg.hidden_state_blocks)
        hidden = []
        for i, block in enumerate(self.blocks):
            if i in keep:
                hidden.append(x)
            x = block(x, cos, sin)
        return self.head(self.norm(x[:, 0])), hidden


def eva_pixels(images: torch.Tensor, cfg: EvaVisionConfig, *, antialias: bool = True) -> torch.Tensor:
    """(b, 3, s, s) RGB in [0, 1] → the tower's input: resized (bicubic) to image_size, normalised with
    cfg.image_mean / image_std. `antialias` as torchvision's tensor `resize` (True from torchvision 0.17 on;
    False in the 0.15 that PuLID's requirements pin)."""
    if images.ndim != 4 or images.shape[1] != cfg.in_channels or images.shape[2] != images.shape[3]:
        raise ValueError(f"EVA-CLIP pixels: expected square (batch, {cfg.in_channels}, s, s) images, "
                         f"got {tuple(images.shape)}")
    if images.shape[-1] != cfg.image_size:
        images = F.interpolate(images, size=(cfg.image_size, cfg.image_size), mode="bicubic",
                               align_corners=False, antialias=antialias)
    mean = torch.tensor(cfg.image_mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.image_std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def _read_raw(path: Path):
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch/safetensors raise many kinds for a bad file
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc


def read_eva_visual_state(path: str | Path) -> dict:
    """The visual tower's entries of an EVA-CLIP checkpoint, keys relative to the tower, RoPE tables
    dropped. Accepts the whole-CLIP layout (`visual.*`, as QuanSun/EVA-CLIP's .pt files are), wrapped in
    `model`/`module`/`state_dict` or not, `module.`-prefixed or not, and a visual-only layout."""
    path = Path(path)
    state = _read_raw(path)
    if isinstance(state, dict):
        for wrapper in _WRAPPERS:
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        raise ValueError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    return {k: v for k, v in state.items() if not _ROPE_BUFFER.match(k)}


def load_eva_vision(path: str | Path, cfg: EvaVisionConfig | None = None, *, device,
                    dtype: torch.dtype) -> EvaVisionTransformer:
    """Build the tower on the meta device and load its weights from `path` (.pt/.pth through
    torch.load(weights_only=True), or .safetensors), strictly: every parameter present with the
    config's shape, nothing else but the tower's RoPE tables (and, in a whole-CLIP file, the
    other towers' keys). Floating-point weights are cast to `dtype` and moved to `device`."""
    path = Path(path)
    cfg = cfg or EvaVisionConfig()
    state = read_eva_visual_state(path)
    with torch.device("meta"):
        model = EvaVisionTransformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape) if torch.is_tensor(state[k]) else type(state[k]).__name__} "
             f"(expected {expected[k]})"
             for k in expected if k in state
             and (not torch.is_tensor(state[k]) or tuple(state[k].shape) != expected[k])]
    problems = []
    if missing:
        problems.append(f"missing {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {_first(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {_first(wrong)}")
    if problems:
        raise ValueError(f"{path}: does not match the EVA-CLIP vision tower config "
                         f"(width {cfg.width}, depth {cfg.depth}, image {cfg.image_size}): " + "; ".join(problems))
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def write_eva_checkpoint(path: str | Path, model: EvaVisionTransformer, *, visual_only: bool = False) -> Path:
    """Write `model`'s weights the way QuanSun/EVA-CLIP's .pt files hold them: a flat state dict with
    `visual.`-prefixed keys, RoPE tables included (under `rope.` and every `blocks.<i>.attn.rope.`).
    `.safetensors` in the name writes safetensors instead of torch.save; `visual_only` drops the prefix."""
    path = Path(path)
    prefix = "" if visual_only else "visual."
    state = {prefix + k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    cos, sin = eva_rope_tables(model.cfg)
    for owner in ["rope."] + [f"blocks.{i}.attn.rope." for i in range(model.cfg.depth)]:
        state[f"{prefix}{owner}freqs_cos"] = cos.clone()
        state[f"{prefix}{owner}freqs_sin"] = sin.clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
