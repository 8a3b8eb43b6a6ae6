"""Face parsing with BiSeNet, as facexlib ships it and PuLID-FLUX v0.9 uses it.

PuLID builds its "face features image" from the 512 x 512 aligned face: a BiSeNet trained on
CelebAMask-HQ labels every pixel with one of 19 classes; pixels of the background classes
(`BACKGROUND_LABELS`) become white, every other pixel becomes the grey version of the face
(0.299 R + 0.587 G + 0.114 B on all three channels). EVA-CLIP then sees only the face's own
features, without hair, clothes or background.

facexlib itself is not imported (its package imports torchvision); the network is written here from
the facts of facexlib's `parsing/bisenet.py` and `parsing/resnet.py`, with facexlib's parameter and
buffer names and shapes, so its `parsing_bisenet.pth` loads with strict key and shape checks:

* `cp.resnet`: a ResNet-18 trunk without pooling/fc head: 7x7/2 conv (3 -> 64) + BN + ReLU, 3x3/2
  max pool, then four stages of two basic blocks (64, 128, 256, 512 wide; stride 1, 2, 2, 2). A
  block is conv3x3 (stride) - BN - ReLU - conv3x3 - BN, plus the shortcut (a 1x1 strided conv + BN
  named `downsample.0/1` where width or stride changes), then ReLU. Stages 2, 3, 4 give the 1/8,
  1/16 and 1/32 feature maps.
* `cp` (context path): `conv_avg` (1x1 ConvBNReLU 512 -> 128) on the global mean of the 1/32 map is
  added to `arm32` (an attention refinement module 512 -> 128: 3x3 ConvBNReLU, then the feature
  times sigmoid(BN(1x1 conv(global mean)))); the sum is upsampled (nearest) to 1/16 and goes
  through `conv_head32` (3x3 ConvBNReLU 128); that is added to `arm16` (256 -> 128) of the 1/16 map,
  upsampled (nearest) to 1/8 and goes through `conv_head16`. Outputs: the 1/8 trunk map, the 1/8
  context map and the 1/16 context map.
* `ffm` (feature fusion, 256 -> 256): concatenation [1/8 trunk map (128), 1/8 context map (128)],
  1x1 ConvBNReLU (`convblk`), then channel attention a = sigmoid(conv2(relu(conv1(mean)))) with
  1x1 convs 256 -> 64 -> 256 without bias, output feat * a + feat.
* Heads (`conv_out`, `conv_out16`, `conv_out32`): 3x3 ConvBNReLU (`conv`) then a 1x1 conv without
  bias (`conv_out`) to the classes; on the fused map (256 -> 256 -> 19) and on the two context maps
  (128 -> 64 -> 19). Each is resized to the input size (bilinear, align_corners=True).
  `forward` returns the three (main first), like facexlib's; callers use the first.
* Every conv has no bias; every ConvBNReLU is conv (`conv`), BN (`bn`), ReLU.

With facexlib's widths (`BiSeNetConfig()`) the model has 13,300,416 parameters (11,176,512 of them
in the ResNet-18 trunk) in 36 convolutions and 31 BatchNorms; the state dict has 191 entries (the
BatchNorms' running mean/var and `num_batches_tracked` included).

The 19 classes (CelebAMask-HQ, in facexlib's order): 0 background, 1 skin, 2 l_brow, 3 r_brow,
4 l_eye, 5 r_eye, 6 eye_g (eyeglasses), 7 l_ear, 8 r_ear, 9 ear_r (earring), 10 nose, 11 mouth,
12 u_lip, 13 l_lip, 14 neck, 15 neck_l (necklace), 16 cloth, 17 hair, 18 hat.

Input: RGB in [0, 1] normalised with ImageNet's mean/std (`IMAGENET_MEAN`, `IMAGENET_STD`); the
helpers below do that. Any height and width work (the maps are resized to explicit sizes, as in
facexlib); PuLID uses 512 x 512.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 19
CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
               "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")

# PuLID's background labels (pulid/pipeline_flux.py, get_id_embedding): whitened in the face features image.
BACKGROUND_LABELS = (
    0,   # background
    16,  # cloth
    18,  # hat
    7,   # l_ear
    8,   # r_ear
    9,   # ear_r (earring)
    14,  # neck
    15,  # neck_l (necklace)
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as PuLID's to_gray


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiSeNetConfig:
    """Widths of the network; the defaults are facexlib's `BiSeNet(num_class=19)`."""

    num_class: int = NUM_CLASSES
    stem: int = 64                                    # the 7x7 stem conv's output
    widths: tuple[int, ...] = (64, 128, 256, 512)     # the four ResNet stages
    blocks: tuple[int, ...] = (2, 2, 2, 2)            # basic blocks per stage
    context: int = 128                                # context path (ARMs, heads, conv_avg)
    fuse: int = 256                                   # feature fusion output (its attention: fuse // 4)
    head: int = 256                                   # main head's hidden width
    aux_head: int = 64                                # the two auxiliary heads' hidden width

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if len(self.widths) != 4 or len(self.blocks) != 4:
            raise ValueError(f"BiSeNet has 4 ResNet stages: widths {self.widths}, blocks {self.blocks}")
        if min(self.blocks) < 1:
            raise ValueError(f"every ResNet stage needs at least one block: {self.blocks}")
        if self.fuse % 4:
            raise ValueError(f"fuse width must be a multiple of 4 (its attention is fuse // 4): {self.fuse}")

    @classmethod
    def tiny(cls) -> "BiSeNetConfig":
        """Narrow widths, one block per stage: the same layout for fast tests."""
        return cls(stem=8, widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1), context=16, fuse=32, head=16,
                   aux_head=8)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------
# Modules (attribute names follow facexlib's state dict)
# --------------------------------------------------------------------------------------------


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNetTrunk(nn.Module):
    """ResNet-18 without its pooling and classifier; returns the 1/8, 1/16 and 1/32 maps."""

    def __init__(self, cfg: BiSeNetConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, cfg.stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem)
        cin = cfg.stem
        for i, (width, count) in enumerate(zip(cfg.widths, cfg.blocks)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width, 1) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        x = self.layer1(x)
        f8 = self.layer2(x)
        f16 = self.layer3(f8)
        f32 = self.layer4(f16)
        return f8, f16, f32


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_mean(feat))))


class ContextPath(nn.Module):
    def __init__(self, cfg: BiSeNetConfig) -> None:
        super().__init__()
        c = cfg.context
        self.resnet = ResNetTrunk(cfg)
        self.arm16 = AttentionRefinement(cfg.widths[2], c)
        self.arm32 = AttentionRefinement(cfg.widths[3], c)
        self.conv_head32 = ConvBNReLU(c, c, 3)
        self.conv_head16 = ConvBNReLU(c, c, 3)
        self.conv_avg = ConvBNReLU(cfg.widths[3], c, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f8, f16, f32 = self.resnet(x)
        # the global context is a 1x1 map; adding it broadcasts like facexlib's nearest upsampling
        up32 = self.arm32(f32) + self.conv_avg(_global_mean(f32))
        up32 = self.conv_head32(F.interpolate(up32, size=f16.shape[2:], mode="nearest"))
        up16 = self.arm16(f16) + up32
        up16 = self.conv_head16(F.interpolate(up16, size=f8.shape[2:], mode="nearest"))
        return f8, up16, up32  # 1/8 trunk, 1/8 context, 1/16 context


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat((spatial, context), dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_mean(feat)))))
        return feat * atten + feat


class SegmentationHead(nn.Module):
    def __init__(self, cin: int, mid: int, num_class: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3)
        self.conv_out = nn.Conv2d(mid, num_class, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """facexlib's face-parsing BiSeNet. `forward(x)` -> (main, aux 1/8, aux 1/16) logits, each
    (b, num_class, H, W) at the input's size; x is ImageNet-normalised RGB."""

    def __init__(self, cfg: BiSeNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or BiSeNetConfig()
        self.cfg = cfg
        self.cp = ContextPath(cfg)
        self.ffm = FeatureFusion(cfg.widths[1] + cfg.context, cfg.fuse)
        self.conv_out = SegmentationHead(cfg.fuse, cfg.head, cfg.num_class)
        self.conv_out16 = SegmentationHead(cfg.context, cfg.aux_head, cfg.num_class)
        self.conv_out32 = SegmentationHead(cfg.context, cfg.aux_head, cfg.num_class)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = x.shape[2:]
        f8, ctx8, ctx16 = self.cp(x)
        outs = (self.conv_out(self.ffm(f8, ctx8)), self.conv_out16(ctx8), self.conv_out32(ctx16))
        return tuple(F.interpolate(o, size=size, mode="bilinear", align_corners=True) for o in outs)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

_WRAPPER_KEYS = ("params_ema", "params", "state_dict")  # checkpoint wrappers; facexlib's own file is a bare state dict


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"{path}: face parser weights must be a .pth or .safetensors file")
    if not path.is_file():
        raise ValueError(f"{path}: face parser weights file not found")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            # own (aligned) storage per tensor: views into the file's one buffer can take other SIMD
            # paths on CPU and differ from the same weights elsewhere in the last bit
            raw = {k: v.clone() for k, v in load_file(str(path)).items()}
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with non-tensor objects, ...
        raise ValueError(f"{path}: cannot read face parser weights: {exc}") from exc
    if isinstance(raw, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(raw.get(key), dict) and not any(isinstance(v, torch.Tensor) for v in raw.values()):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return dict(raw)


def _shape(sd: dict[str, torch.Tensor], path: Path, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ValueError(f"{path}: not a BiSeNet face parser: missing key {key!r}")
    return tuple(sd[key].shape)


def config_from_state_dict(sd: dict[str, torch.Tensor], path: Path | str = "<state dict>") -> BiSeNetConfig:
    """The widths a BiSeNet state dict was made with (read from a few weight shapes)."""
    path = Path(path)
    widths, blocks = [], []
    for i in range(1, 5):
        widths.append(_shape(sd, path, f"cp.resnet.layer{i}.0.conv1.weight")[0])
        count = 1
        while f"cp.resnet.layer{i}.{count}.conv1.weight" in sd:
            count += 1
        blocks.append(count)
    head = _shape(sd, path, "conv_out.conv.conv.weight")
    try:
        return BiSeNetConfig(
            num_class=_shape(sd, path, "conv_out.conv_out.weight")[0],
            stem=_shape(sd, path, "cp.resnet.conv1.weight")[0],
            widths=tuple(widths), blocks=tuple(blocks),
            context=_shape(sd, path, "cp.arm16.conv.conv.weight")[0],
            fuse=head[1], head=head[0],
            aux_head=_shape(sd, path, "conv_out16.conv.conv.weight")[0])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _check_keys(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    sd = dict(sd)
    # BatchNorm's step counter only matters in training; files saved before it existed lack it
    # (torch's own BatchNorm loading fills it in for such files too).
    if not any(k.endswith(".num_batches_tracked") for k in sd):
        for key, value in expected.items():
            if key.endswith(".num_batches_tracked"):
                sd[key] = torch.zeros(value.shape, dtype=value.dtype)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}"
                        + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    if wrong:
        problems.append(f"wrong shapes {wrong[:5]}" + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""))
    if problems:
        raise ValueError(f"{path}: does not match the BiSeNet face parser: " + "; ".join(problems))
    return sd


def load_face_parser(path: Path | str, cfg: BiSeNetConfig | None = None, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> BiSeNet:
    """Load BiSeNet weights (facexlib's `parsing_bisenet.pth`, or the same tensors as .safetensors).

    `cfg` None: the widths are read from the file (facexlib's file gives `BiSeNetConfig()`); given:
    the file must match it. Every key and shape is checked (ValueError naming the file and the
    first offending keys). Returns the model in eval mode, without gradients, on device/dtype."""
    path = Path(path)
    sd = _read_state_dict(path)
    cfg = cfg if cfg is not None else config_from_state_dict(sd, path)
    with torch.device("meta"):
        model = BiSeNet(cfg)
    sd = _check_keys(model, sd, path)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def write_face_parser(path: Path | str, model: BiSeNet) -> Path:
    """Write the model's state dict: a bare state dict in a .pth file (facexlib's format), or a
    .safetensors file."""
    path = Path(path)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif path.suffix.lower() == ".pth":
        torch.save(sd, str(path))
    else:
        raise ValueError(f"{path}: face parser weights are written as .pth or .safetensors")
    return path


# --------------------------------------------------------------------------------------------
# PuLID's use
# --------------------------------------------------------------------------------------------


def _check_face(face: torch.Tensor) -> None:
    if face.ndim != 4 or face.shape[1] != 3:
        raise ValueError(f"face must be a (batch, 3, height, width) RGB tensor, got shape {tuple(face.shape)}")


@torch.no_grad()
def label_map(model: BiSeNet, face: torch.Tensor) -> torch.Tensor:
    """(b, 1, H, W) int64 class labels of `face` ((b, 3, H, W) RGB in [0, 1]), on face's device."""
    _check_face(face)
    param = next(model.parameters())
    x = face.to(device=param.device, dtype=torch.float32)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    logits = model(((x - mean) / std).to(param.dtype))[0]
    return logits.argmax(dim=1, keepdim=True).to(face.device)


def to_gray(face: torch.Tensor) -> torch.Tensor:
    """0.299 R + 0.587 G + 0.114 B, repeated on 3 channels."""
    r, g, b = GRAY_WEIGHTS
    return (r * face[:, 0:1] + g * face[:, 1:2] + b * face[:, 2:3]).repeat(1, 3, 1, 1)


def whiten_background(face: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixels whose label is in BACKGROUND_LABELS -> 1.0; the rest -> the grey face."""
    _check_face(face)
    if labels.ndim != 4 or labels.shape[1] != 1 or labels.shape[0] != face.shape[0] \
            or labels.shape[2:] != face.shape[2:]:
        raise ValueError(f"labels must be (batch, 1, height, width) matching the face {tuple(face.shape)}, "
                         f"got {tuple(labels.shape)}")
    background = torch.isin(labels.to(face.device), torch.tensor(BACKGROUND_LABELS, device=face.device))
    return torch.where(background, torch.ones((), dtype=face.dtype, device=face.device), to_gray(face))


def face_features_image(model: BiSeNet, face: torch.Tensor) -> torch.Tensor:
    """PuLID's face features image of `face` ((b, 3, H, W) RGB in [0, 1], the aligned 512 face):
    background classes white, the face's own pixels grey. Same shape, dtype and device as face."""
    return whiten_background(face, label_map(model, face))
