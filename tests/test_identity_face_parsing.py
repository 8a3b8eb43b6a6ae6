"""facexlib's BiSeNet face parser (diffserve/engine/identity/face_parsing.py) and PuLID's face features image.

The real layout is checked on the meta device against facexlib's parameter names, shapes and count;
forward passes run the real widths at 64 px and the tiny widths at 512 px, on one torch thread.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffserve.engine.identity.face_parsing import (
    BACKGROUND_LABELS,
    CLASS_NAMES,
    BiSeNet,
    BiSeNetConfig,
    config_from_state_dict,
    face_features_image,
    label_map,
    load_face_parser,
    whiten_background,
    write_face_parser,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_model(cfg: BiSeNetConfig, seed: int = 0) -> BiSeNet:
    """Random weights and BatchNorm statistics (so that every buffer matters), eval mode."""
    torch.manual_seed(seed)
    model = BiSeNet(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval().requires_grad_(False)


def faces(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def formula_weights(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Deterministic weights for every tensor of a state dict from a sine hash in float64 (no RNG:
    the same on any machine): uniform in [-1, 1] times sqrt(3 / fan_in) for convs; BatchNorm
    affine and statistics around 1 / 0."""
    out = {}
    for j, (key, like) in enumerate(reference.items()):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(like.shape, dtype=like.dtype)
            continue
        i = torch.arange(like.numel(), dtype=torch.float64)
        s = (torch.frac(torch.sin(i * 12.9898 + j * 78.233).abs() * 43758.5453) * 2 - 1).view(like.shape)
        if like.ndim == 4:
            value = s * math.sqrt(3.0 / (like.shape[1] * like.shape[2] * like.shape[3]))
        elif key.endswith("running_var"):
            value = 1.0 + 0.5 * s
        elif key.endswith(".weight"):
            value = 1.0 + 0.3 * s
        else:  # bias, running_mean
            value = 0.2 * s
        out[key] = value.to(torch.float32)
    return out


def formula_face(b: int, h: int, w: int) -> torch.Tensor:
    y = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1)
    x = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w)
    c = torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1)
    n = torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1)
    return (0.5 + 0.5 * torch.sin(0.21 * x + 0.13 * y * (c + 1) + 0.9 * n)).to(torch.float32)


@pytest.fixture(scope="module")
def tiny() -> BiSeNet:
    return random_model(BiSeNetConfig.tiny())


# ---------------------------------------------------------------- layout


def test_real_layout_is_facexlibs():
    with torch.device("meta"):
        model = BiSeNet()
    sd = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 13_300_416
    assert sum(p.numel() for p in model.cp.resnet.parameters()) == 11_176_512  # ResNet-18 minus its fc
    assert len(sd) == 191
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 31
    expected = {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.resnet.bn1.running_mean": (64,),
        "cp.resnet.layer1.1.conv2.weight": (64, 64, 3, 3),
        "cp.resnet.layer2.0.conv1.weight": (128, 64, 3, 3),
        "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "cp.resnet.layer2.0.downsample.1.running_var": (128,),
        "cp.resnet.layer4.1.bn2.weight": (512,),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
        "cp.arm32.bn_atten.bias": (128,),
        "cp.conv_head32.conv.weight": (128, 128, 3, 3),
        "cp.conv_head16.bn.num_batches_tracked": (),
        "cp.conv_avg.conv.weight": (128, 512, 1, 1),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "ffm.conv1.weight": (64, 256, 1, 1),
        "ffm.conv2.weight": (256, 64, 1, 1),
        "conv_out.conv.conv.weight": (256, 256, 3, 3),
        "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv.conv.weight": (64, 128, 3, 3),
        "conv_out32.conv_out.weight": (19, 64, 1, 1),
    }
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    # no shortcut conv where width and stride stay; no biases on convs
    assert not any(k.startswith("cp.resnet.layer1.0.downsample") for k in sd)
    assert not any(k.endswith("conv.bias") or k.endswith("conv_out.bias") for k in sd)
    assert config_from_state_dict(sd) == BiSeNetConfig()


def test_background_labels_are_pulids():
    assert len(CLASS_NAMES) == 19
    assert BACKGROUND_LABELS == (0, 16, 18, 7, 8, 9, 14, 15)
    assert [CLASS_NAMES[i] for i in BACKGROUND_LABELS] == [
        "background", "cloth", "hat", "l_ear", "r_ear", "ear_r", "neck", "neck_l"]


def test_config_checks():
    with pytest.raises(ValueError, match="4 ResNet stages"):
        BiSeNetConfig(widths=(8, 16, 32))
    with pytest.raises(ValueError, match="multiple of 4"):
        BiSeNetConfig(fuse=30)
    # config.json round trip (lists in JSON, tuples in the dataclass)
    assert BiSeNetConfig(**json.loads(json.dumps(BiSeNetConfig.tiny().to_dict()))) == BiSeNetConfig.tiny()


# ---------------------------------------------------------------- forward


def test_real_widths_at_64px():
    model = random_model(BiSeNetConfig())
    x = faces(2, 64, 64)
    with torch.no_grad():
        outs = model(x)
        again = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 19, 64, 64)] * 3
    assert all(torch.equal(a, b) for a, b in zip(outs, again))
    assert torch.isfinite(outs[0]).all()
    assert not torch.equal(outs[0][0], outs[0][1])  # the two faces are parsed apart


# facexlib 0.3.0's own BiSeNet(num_class=19) (the PyPI wheel's facexlib/parsing/{bisenet,resnet}.py,
# run outside this project), loaded with formula_weights and given the ImageNet-normalised
# formula_face(1, 64, 64): logits of its three outputs at three pixels, and each output's sum.
FACEXLIB_LOGITS = {
    (0, 0, 0): [1.5029, -0.9101, 1.6082, 1.3031, 2.048, -0.3188, -2.3177, -0.096, 0.1479, -1.1544, 2.1469,
                1.5755, 0.8959, 1.3905, -0.4909, -0.2221, -0.1771, 2.2432, -1.0257],
    (0, 10, 50): [2.2025, -0.9958, 1.6299, 0.4498, 2.853, 1.0559, -1.093, 0.2846, -1.0115, -2.7251, 3.9142,
                  1.6291, -0.7926, 1.2167, -0.4109, -1.3816, -0.0609, 4.309, -0.6394],
    (0, 63, 31): [1.3576, -1.5922, -1.4419, 1.1369, 0.7448, 0.8525, -0.69, 0.008, -1.3023, -2.1396, 1.0916,
                  0.891, -1.2921, 1.8247, 0.7855, -2.0009, 1.1596, 2.1313, 0.7142],
    (1, 10, 50): [0.2857, 0.4836, -0.2953, -0.9471, 0.6442, 0.9615, -1.2711, -0.2401, 0.2244, -0.108, 0.8363,
                  -0.3001, 1.7823, 0.4325, 0.2871, -0.4641, 0.0667, -1.3794, 2.807],
    (1, 63, 31): [0.666, -0.0095, -1.1164, 0.0388, 1.2162, 1.7629, -0.1408, 0.1286, -0.247, -0.7703, 0.7635,
                  0.2229, 1.6363, 0.6103, 0.3982, -0.2103, -0.0011, -0.8855, 2.3781],
    (2, 0, 0): [-0.0087, -0.605, 0.5063, 0.1166, -0.4617, 0.3604, -0.224, -0.2283, -0.2225, -0.1065, 0.3708,
                -0.5003, -0.7135, 0.762, 0.5953, -0.7057, 0.2636, -0.0962, 0.9789],
    (2, 10, 50): [-0.5494, -0.3902, -0.1467, -0.1369, -0.4533, 0.0486, 0.6817, 0.2379, -0.4414, 0.3321, 0.0737,
                  -0.6194, -0.1436, 0.1578, -0.1552, -0.3547, 0.7507, 0.2435, 0.4906],
}
FACEXLIB_SUMS = [32815.3673, 20612.5528, -3495.5230]


def test_matches_facexlib_numbers():
    with torch.device("meta"):
        model = BiSeNet()
    model.load_state_dict(formula_weights(model.state_dict()), assign=True)
    model.eval()
    face = formula_face(1, 64, 64)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        outs = model((face - mean) / std)
    for (k, y, x), expected in FACEXLIB_LOGITS.items():
        torch.testing.assert_close(outs[k][0, :, y, x], torch.tensor(expected), atol=1e-3, rtol=0,
                                   msg=lambda m, k=k, y=y, x=x: f"output {k} at ({y}, {x}): {m}")
    for out, expected in zip(outs, FACEXLIB_SUMS):
        assert float(out.double().sum()) == pytest.approx(expected, rel=1e-4)
    labels = label_map(model, face)
    assert labels[0, 0, 10, 50] == 17 and labels[0, 0, 0, 0] == 17  # hair wins there (4.309, 2.2432)


@pytest.mark.parametrize("size", [(512, 512), (96, 64)])
def test_tiny_shapes(tiny, size):
    x = faces(1, *size)
    with torch.no_grad():
        outs = tiny(x)
    assert [tuple(o.shape) for o in outs] == [(1, 19, *size)] * 3
    labels = label_map(tiny, x)
    assert labels.shape == (1, 1, *size) and labels.dtype == torch.int64
    assert torch.equal(labels, label_map(tiny, x))


def test_label_map_is_argmax_of_imagenet_normalised_main_output(tiny):
    face = faces(2, 64, 64, seed=3)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = tiny((face - mean) / std)[0].argmax(dim=1, keepdim=True)
        unnormalised = tiny(face)[0].argmax(dim=1, keepdim=True)
    assert torch.equal(label_map(tiny, face), expected)
    assert not torch.equal(expected, unnormalised)


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_write_load_round_trip(tmp_path, tiny, suffix):
    path = write_face_parser(tmp_path / f"parsing_bisenet{suffix}", tiny)
    loaded = load_face_parser(path, device="cpu", dtype=torch.float32)
    assert loaded.cfg == BiSeNetConfig.tiny() and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = faces(1, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(tiny(x), loaded(x)))
    explicit = load_face_parser(path, BiSeNetConfig.tiny(), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(explicit(x)[0], tiny(x)[0])


def test_pth_is_a_bare_state_dict(tmp_path, tiny):
    """facexlib's init_parsing_model passes torch.load's result straight to load_state_dict."""
    raw = torch.load(write_face_parser(tmp_path / "p.pth", tiny), weights_only=True)
    assert list(raw) == list(tiny.state_dict())
    assert all(torch.equal(raw[k], v) for k, v in tiny.state_dict().items())


def test_loads_wrapped_and_pre_counter_files(tmp_path, tiny):
    sd = tiny.state_dict()
    torch.save({"params": sd}, tmp_path / "wrapped.pth")
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    x = faces(1, 32, 32)
    for name in ("wrapped.pth", "old.pth"):
        loaded = load_face_parser(tmp_path / name, device="cpu", dtype=torch.float32)
        with torch.no_grad():
            assert torch.equal(loaded(x)[0], tiny(x)[0]), name


def test_load_casts_to_dtype(tmp_path, tiny):
    loaded = load_face_parser(write_face_parser(tmp_path / "p.pth", tiny), device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.cp.resnet.bn1.num_batches_tracked.dtype == torch.int64
    face = faces(1, 32, 32)
    out = face_features_image(loaded, face)
    assert out.shape == face.shape and out.dtype == torch.float32


def _save(path, sd):
    torch.save(sd, path)
    return path


def test_strict_errors(tmp_path, tiny):
    sd = tiny.state_dict()
    missing = _save(tmp_path / "missing.pth", {k: v for k, v in sd.items() if k != "ffm.conv1.weight"})
    with pytest.raises(ValueError, match=r"missing\.pth.*missing keys \['ffm\.conv1\.weight'\]"):
        load_face_parser(missing)
    extra = _save(tmp_path / "extra.pth", {**sd, "cp.resnet.fc.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"extra\.pth.*unexpected keys \['cp\.resnet\.fc\.weight'\]"):
        load_face_parser(extra)
    wrong = _save(tmp_path / "wrong.pth", {**sd, "ffm.conv2.weight": torch.zeros(32, 4, 3, 3)})
    with pytest.raises(ValueError, match=r"wrong\.pth.*wrong shapes \['ffm\.conv2\.weight \(32, 4, 3, 3\)"):
        load_face_parser(wrong)
    tiny_file = write_face_parser(tmp_path / "tiny.pth", tiny)
    with pytest.raises(ValueError, match=r"tiny\.pth.*wrong shapes \['cp\.resnet\.conv1\.weight \(8, 3, 7, 7\) "
                                         r"\(expected \(64, 3, 7, 7\)\)"):
        load_face_parser(tiny_file, BiSeNetConfig())
    not_bisenet = _save(tmp_path / "other.pth", {"weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"other\.pth: not a BiSeNet face parser: missing key"):
        load_face_parser(not_bisenet)
    not_tensors = _save(tmp_path / "junk.pth", {"a": 1})
    with pytest.raises(ValueError, match=r"junk\.pth: not a state dict of tensors"):
        load_face_parser(not_tensors)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"corrupt\.safetensors: cannot read"):
        load_face_parser(corrupt)
    with pytest.raises(ValueError, match=r"absent\.pth: face parser weights file not found"):
        load_face_parser(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match=r"\.onnx: face parser weights must be a \.pth or \.safetensors"):
        load_face_parser(tmp_path / "parser.onnx")


# ---------------------------------------------------------------- PuLID's face features image


def gray_by_hand(face: torch.Tensor) -> torch.Tensor:
    return (0.299 * face[:, 0:1] + 0.587 * face[:, 1:2] + 0.114 * face[:, 2:3]).expand(-1, 3, -1, -1)


def test_whiten_background_on_a_hand_made_label_map():
    face = faces(2, 19, 8, seed=5)
    labels = torch.arange(19).view(1, 1, 19, 1).expand(2, 1, 19, 8).clone()  # row i has label i
    labels[1] = 17 - labels[1].clamp(max=17)  # second face: other rows, still covering every label 0..17
    out = whiten_background(face, labels)
    assert out.shape == face.shape and out.dtype == face.dtype
    background = torch.isin(labels, torch.tensor([0, 7, 8, 9, 14, 15, 16, 18])).expand(-1, 3, -1, -1)
    assert (out[background] == 1.0).all()
    assert torch.equal(out[~background], gray_by_hand(face)[~background])
    assert background.any() and (~background).any()
    # the three channels of a face pixel are the same grey
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def controlled(cfg: BiSeNetConfig, winner: int) -> BiSeNet:
    """A tiny model whose main head votes `winner` everywhere: the head's hidden features are
    BN(beta=1, gamma=0) -> ReLU = 1, and only the winner's classifier row is non-zero."""
    model = random_model(cfg)
    with torch.no_grad():
        model.conv_out.conv.bn.weight.zero_()
        model.conv_out.conv.bn.bias.fill_(1.0)
        model.conv_out.conv_out.weight.zero_()
        model.conv_out.conv_out.weight[winner] = 1.0
    return model


@pytest.mark.parametrize("winner, white", [(17, False), (1, False), (16, True), (0, True)])
def test_face_features_image_follows_the_parse(winner, white):
    model = controlled(BiSeNetConfig.tiny(), winner)
    face = faces(2, 64, 64, seed=7)
    assert (label_map(model, face) == winner).all()
    out = face_features_image(model, face)
    assert out.shape == face.shape
    if white:
        assert (out == 1.0).all()
    else:
        assert torch.equal(out, gray_by_hand(face))


def test_bad_shapes_are_refused(tiny):
    with pytest.raises(ValueError, match=r"face must be a \(batch, 3, height, width\)"):
        face_features_image(tiny, torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"face must be a \(batch, 3, height, width\)"):
        label_map(tiny, torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"labels must be \(batch, 1, height, width\)"):
        whiten_background(torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 16, 16, dtype=torch.int64))
