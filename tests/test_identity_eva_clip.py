"""EVA02-CLIP-L-14-336's vision tower (diffserve/engine/identity/eva_clip.py): the real config's parameters and
names (on the meta device), and a tiny tower's forward, checkpoint round trips and strict loading.
The attention check recomputes one layer from the formula (complex-number rotation of channel pairs),
so a RoPE layout mistake (rows/columns swapped, halves instead of pairs) fails it."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from diffserve.engine.identity.eva_clip import (
    REAL_PARAMETER_COUNT,
    EvaVisionConfig,
    EvaVisionTransformer,
    eva_pixels,
    eva_rope_tables,
    load_eva_vision,
    write_eva_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = EvaVisionConfig.tiny()


def random_tower(cfg: EvaVisionConfig = TINY, seed: int = 0) -> EvaVisionTransformer:
    """A tiny tower whose every parameter is random (biases, q/v biases and LayerNorms included), so a
    forgotten bias or norm changes the numbers."""
    gen = torch.Generator().manual_seed(seed)
    model = EvaVisionTransformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm = ".norm" in f".{name}" or "_ln." in name or name.startswith("norm.")
            if is_norm and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(noise * (0.3 if p.ndim == 1 else 1 / math.sqrt(max(1, p[0].numel()))))
    return model


def pixels(batch: int = 2, seed: int = 1, cfg: EvaVisionConfig = TINY) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)


def shuffle_patches(img: torch.Tensor, cfg: EvaVisionConfig, perm: torch.Tensor) -> torch.Tensor:
    """Move whole patches: patch perm[i] of the input lands at grid position i."""
    b, c, g, p = img.shape[0], img.shape[1], cfg.grid, cfg.patch_size
    tiles = img.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, p, p)
    tiles = tiles[:, perm].reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return tiles.reshape(b, c, g * p, g * p)


def run_by_hand(model: EvaVisionTransformer, img: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """The tower's composition spelled out, with RoPE tables chosen by the caller; returns the
    embedding and the sequence entering every block (index i = after i blocks)."""
    x = model.patch_embed.proj(img).flatten(2).transpose(1, 2)
    x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + model.pos_embed
    entering = []
    for block in model.blocks:
        entering.append(x)
        x = block(x, cos, sin)
    return model.head(model.norm(x)[:, 0]), entering


def attention_by_formula(attn, x: torch.Tensor, cfg: EvaVisionConfig, layout: str = "eva") -> torch.Tensor:
    """One EVA02 attention layer from its definition. Rotary embedding: channel pairs (2m, 2m+1) of a head
    are one complex number; pair j < d/4 turns by row' * theta^(-2j/(d/2)), pair d/4 + j by col' * the same
    frequency, row' = row * pt_grid / grid (likewise col'); the class token does not turn.
    `layout` "swapped" (rows and columns exchanged) or "halves" (pairs (m, m + d/2) instead of adjacent
    channels) compute the wrong layouts, to show this check can tell them apart."""
    b, n, _ = x.shape
    h, d = cfg.heads, cfg.head_width
    q = (x @ attn.q_proj.weight.T + attn.q_bias).reshape(b, n, h, d)
    k = (x @ attn.k_proj.weight.T).reshape(b, n, h, d)
    v = (x @ attn.v_proj.weight.T + attn.v_bias).reshape(b, n, h, d)
    angles = torch.zeros(n, d // 2, dtype=torch.float64)
    for patch in range(cfg.num_patches):
        row, col = divmod(patch, cfg.grid)
        if layout == "swapped":
            row, col = col, row
        for j in range(d // 4):
            freq = cfg.rope_theta ** (-2 * j / (d // 2))
            angles[1 + patch, j] = row * cfg.rope_pt_grid / cfg.grid * freq
            angles[1 + patch, d // 4 + j] = col * cfg.rope_pt_grid / cfg.grid * freq
    turn = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)[None, :, None, :]

    def rotate(t):
        if layout == "halves":
            z = torch.complex(t[..., : d // 2], t[..., d // 2:]) * turn
            return torch.cat((z.real, z.imag), dim=-1)
        return torch.view_as_real(torch.view_as_complex(t.reshape(b, n, h, d // 2, 2).contiguous()) * turn).reshape(
            b, n, h, d)

    q, k = rotate(q), rotate(k)
    weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, h * d)
    out = F.layer_norm(out, (h * d,), attn.inner_attn_ln.weight, attn.inner_attn_ln.bias, cfg.norm_eps)
    return out @ attn.proj.weight.T + attn.proj.bias


# --------------------------------------------------------------------------------------------
# The real tower's shape, on the meta device
# --------------------------------------------------------------------------------------------


def reference_names(depth: int) -> set[str]:
    per_block = ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                 "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight", "attn.q_bias", "attn.v_bias",
                 "attn.inner_attn_ln.weight", "attn.inner_attn_ln.bias", "attn.proj.weight", "attn.proj.bias",
                 "mlp.w1.weight", "mlp.w1.bias", "mlp.w2.weight", "mlp.w2.bias",
                 "mlp.ffn_ln.weight", "mlp.ffn_ln.bias", "mlp.w3.weight", "mlp.w3.bias"]
    top = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
           "norm.weight", "norm.bias", "head.weight", "head.bias"]
    return set(top) | {f"blocks.{i}.{n}" for i in range(depth) for n in per_block}


def test_real_tower_parameters_match_eva02_clip_l_14_336():
    cfg = EvaVisionConfig()
    with torch.device("meta"):
        model = EvaVisionTransformer(cfg)
    # width 1024, 24 blocks, SwiGLU hidden int(1024 * 2.6667) = 2730, 577 tokens, head 1024 -> 768:
    w, hid = 1024, 2730
    block = (2 * 2 * w) + (3 * w * w + 2 * w + 2 * w + w * w + w) + (2 * (w * hid + hid) + 2 * hid + hid * w + w)
    total = (w * 3 * 14 * 14 + w) + w + 577 * w + 24 * block + 2 * w + (w * 768 + 768)
    assert block == 12_602_024
    assert total == REAL_PARAMETER_COUNT == 304_432_832
    assert sum(p.numel() for p in model.parameters()) == REAL_PARAMETER_COUNT
    state = model.state_dict()
    assert set(state) == reference_names(24)  # and no buffers: the RoPE tables are not state
    shapes = {
        "patch_embed.proj.weight": (1024, 3, 14, 14), "patch_embed.proj.bias": (1024,),
        "cls_token": (1, 1, 1024), "pos_embed": (1, 577, 1024),
        "blocks.0.attn.q_proj.weight": (1024, 1024), "blocks.0.attn.q_bias": (1024,),
        "blocks.11.attn.inner_attn_ln.weight": (1024,), "blocks.11.attn.proj.weight": (1024, 1024),
        "blocks.23.mlp.w1.weight": (2730, 1024), "blocks.23.mlp.w2.bias": (2730,),
        "blocks.23.mlp.ffn_ln.weight": (2730,), "blocks.23.mlp.w3.weight": (1024, 2730),
        "norm.weight": (1024,), "head.weight": (768, 1024), "head.bias": (768,),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert (cfg.heads, cfg.grid, cfg.mlp_hidden, cfg.hidden_state_blocks) == (16, 24, 2730, (4, 8, 12, 16, 20))
    cos, sin = eva_rope_tables(cfg)
    assert cos.shape == sin.shape == (576, 64)
    # shapes of a forward, without computing anything
    emb, hidden = model(torch.empty(2, 3, 336, 336, device="meta"))
    assert emb.shape == (2, 768)
    assert [tuple(h.shape) for h in hidden] == [(2, 577, 1024)] * 5


def test_config_checks_and_dict_round_trip():
    assert EvaVisionConfig.from_dict(TINY.to_dict()) == TINY
    as_json = json.loads(json.dumps(TINY.to_dict()))  # tuples come back as lists
    assert EvaVisionConfig(**as_json) == TINY and isinstance(EvaVisionConfig(**as_json).hidden_state_blocks, tuple)
    with pytest.raises(ValueError, match="hidden_state_blocks"):
        EvaVisionConfig(depth=12)  # blocks 12..20 do not exist
    with pytest.raises(ValueError, match="patch_size"):
        EvaVisionConfig(image_size=30, patch_size=7)
    with pytest.raises(ValueError, match="unknown field"):
        EvaVisionConfig.from_dict({"widht": 8})


# --------------------------------------------------------------------------------------------
# Tiny tower: forward
# --------------------------------------------------------------------------------------------


def test_tiny_forward_shapes_and_determinism():
    model = random_tower()
    img = pixels(batch=2)
    with torch.no_grad():
        emb, hidden = model(img)
        emb2, hidden2 = model(img)
        single, _ = model(img[1:])
    assert emb.shape == (2, TINY.embed_dim) and emb.dtype == torch.float32
    assert len(hidden) == len(TINY.hidden_state_blocks) == 5
    assert all(h.shape == (2, 1 + TINY.num_patches, TINY.width) for h in hidden)
    assert torch.equal(emb, emb2) and all(torch.equal(a, b) for a, b in zip(hidden, hidden2))
    torch.testing.assert_close(single[0], emb[1], rtol=1e-5, atol=1e-5)  # no mixing across the batch
    assert emb.norm(dim=-1).sub(1).abs().max() > 1e-3  # not L2-normalised here
    with pytest.raises(ValueError, match=r"pixels must be \(batch, 3, 28, 28\)"):
        model(torch.zeros(1, 3, 32, 32))


def test_hidden_states_are_the_sequences_entering_the_chosen_blocks():
    model = random_tower()
    img = pixels()
    with torch.no_grad():
        emb, hidden = model(img)
        by_hand, entering = run_by_hand(model, img, *eva_rope_tables(TINY))
    torch.testing.assert_close(emb, by_hand, rtol=0, atol=0)
    for got, block in zip(hidden, TINY.hidden_state_blocks):
        torch.testing.assert_close(got, entering[block], rtol=0, atol=0)
    assert not torch.equal(hidden[0], entering[0])  # block 0's input (the embeddings) is not returned


def test_attention_layer_matches_the_formula_and_its_rope_layout():
    model = random_tower(seed=3)
    attn = model.blocks[2].attn
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1 + TINY.num_patches, TINY.width, generator=gen)
    with torch.no_grad():
        got = attn(x, *eva_rope_tables(TINY))
        torch.testing.assert_close(got, attention_by_formula(attn, x, TINY), rtol=1e-4, atol=1e-5)
        for wrong in ("swapped", "halves"):  # the check above would catch these layouts
            assert (got - attention_by_formula(attn, x, TINY, layout=wrong)).abs().max() > 1e-3


def test_block_matches_the_formula():
    """Pre-norm residual block; MLP = SwiGLU with a LayerNorm on the gated hidden layer."""
    model = random_tower(seed=9)
    block = model.blocks[4]
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 1 + TINY.num_patches, TINY.width, generator=gen)

    def ln(t, norm):
        return F.layer_norm(t, (t.shape[-1],), norm.weight, norm.bias, TINY.norm_eps)

    with torch.no_grad():
        mid = x + attention_by_formula(block.attn, ln(x, block.norm1), TINY)
        m = block.mlp
        y = ln(mid, block.norm2)
        gated = F.silu(y @ m.w1.weight.T + m.w1.bias) * (y @ m.w2.weight.T + m.w2.bias)
        want = mid + ln(gated, m.ffn_ln) @ m.w3.weight.T + m.w3.bias
        torch.testing.assert_close(block(x, *eva_rope_tables(TINY)), want, rtol=1e-4, atol=1e-5)


def test_position_matters_through_rope_and_through_pos_embed():
    model = random_tower(seed=4)
    img = pixels(batch=1, seed=6)
    perm = torch.randperm(TINY.num_patches, generator=torch.Generator().manual_seed(7))
    moved = shuffle_patches(img, TINY, perm)
    ones = torch.ones(TINY.num_patches, TINY.head_width)
    no_turn = (ones, torch.zeros_like(ones))
    with torch.no_grad():
        # moved patches are the same tokens, permuted
        tokens = model.patch_embed(img)
        torch.testing.assert_close(model.patch_embed(moved), tokens[:, perm], rtol=1e-5, atol=1e-5)
        with_pos = (model(img)[0], model(moved)[0])
        assert (with_pos[0] - with_pos[1]).abs().max() > 1e-3
        model.pos_embed.zero_()
        # no position information at all: the class token's output cannot tell the patch order
        still = run_by_hand(model, img, *no_turn)[0], run_by_hand(model, moved, *no_turn)[0]
        torch.testing.assert_close(still[0], still[1], rtol=1e-4, atol=1e-5)
        # RoPE alone (pos_embed zero) tells it
        rope_only = model(img)[0], model(moved)[0]
        assert (rope_only[0] - rope_only[1]).abs().max() > 1e-3


def test_eva_pixels_resizes_and_normalises():
    gen = torch.Generator().manual_seed(8)
    faces = torch.rand(1, 3, 28, 28, generator=gen)
    mean = torch.tensor(TINY.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(TINY.image_std).view(1, 3, 1, 1)
    torch.testing.assert_close(eva_pixels(faces, TINY), (faces - mean) / std)
    assert eva_pixels(torch.rand(2, 3, 56, 56, generator=gen), TINY).shape == (2, 3, 28, 28)
    with pytest.raises(ValueError, match="square"):
        eva_pixels(torch.rand(1, 3, 56, 40), TINY)


# --------------------------------------------------------------------------------------------
# Tiny tower: checkpoints
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tower():
    return random_tower(seed=11)


def outputs(model, img):
    with torch.no_grad():
        return model(img)


def assert_same_outputs(a, b):
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("name,visual_only", [("eva.pt", False), ("eva.safetensors", False),
                                              ("visual.safetensors", True)])
def test_checkpoint_round_trip(tmp_path, tower, name, visual_only):
    path = write_eva_checkpoint(tmp_path / name, tower, visual_only=visual_only)
    loaded = load_eva_vision(path, TINY, device="cpu", dtype=torch.float32)
    assert not loaded.training and not any(p.requires_grad or p.is_meta for p in loaded.parameters())
    img = pixels()
    assert_same_outputs(outputs(loaded, img), outputs(tower, img))


def test_written_pt_has_the_reference_layout(tmp_path, tower):
    state = torch.load(write_eva_checkpoint(tmp_path / "eva.pt", tower), weights_only=True)
    assert all(k.startswith("visual.") for k in state)
    assert {"visual.rope.freqs_cos", "visual.blocks.0.attn.rope.freqs_sin", "visual.head.weight"} <= set(state)
    torch.testing.assert_close(state["visual.blocks.5.attn.rope.freqs_cos"], eva_rope_tables(TINY)[0])


def test_whole_clip_file_wrapped_and_module_prefixed_loads(tmp_path, tower):
    state = torch.load(write_eva_checkpoint(tmp_path / "eva.pt", tower), weights_only=True)
    state.update({"text.token_embedding.weight": torch.zeros(10, 4), "logit_scale": torch.tensor(4.6)})
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_eva_vision(path, TINY, device="cpu", dtype=torch.float32)
    img = pixels()
    assert_same_outputs(outputs(loaded, img), outputs(tower, img))


def test_load_casts_to_the_asked_dtype(tmp_path, tower):
    path = write_eva_checkpoint(tmp_path / "eva.safetensors", tower)
    loaded = load_eva_vision(path, TINY, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    img = pixels()
    emb, hidden = outputs(loaded, img)  # float32 pixels are cast to the tower's dtype
    assert emb.dtype == torch.bfloat16 and hidden[0].dtype == torch.bfloat16
    ref = outputs(tower, img)[0]
    assert (emb.float() - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize("change,message", [
    (lambda s: s.pop("visual.blocks.1.mlp.w3.bias"), "missing blocks.1.mlp.w3.bias"),
    (lambda s: s.__setitem__("visual.blocks.0.attn.k_bias", torch.zeros(32)), "unexpected blocks.0.attn.k_bias"),
    (lambda s: s.__setitem__("visual.head.weight", torch.zeros(8, 32)), r"wrong shape head.weight \(8, 32\)"),
])
def test_strict_load_names_the_file_and_the_keys(tmp_path, tower, change, message):
    state = torch.load(write_eva_checkpoint(tmp_path / "eva.pt", tower), weights_only=True)
    change(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=message) as err:
        load_eva_vision(path, TINY, device="cpu", dtype=torch.float32)
    assert "bad.pt" in str(err.value)


def test_wrong_config_or_garbage_file_is_a_clear_error(tmp_path, tower):
    path = write_eva_checkpoint(tmp_path / "eva.pt", tower)
    with pytest.raises(ValueError, match="eva.pt: does not match .*width 1024, depth 24"):
        load_eva_vision(path, None, device="cpu", dtype=torch.float32)  # the real config
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable checkpoint"):
        load_eva_vision(junk, TINY, device="cpu", dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Parity with the reference code (numbers recorded from it)
# --------------------------------------------------------------------------------------------

# Recorded from the reference EVAVisionTransformer (the eva_clip package PuLID vendors: eva_vit_model.py +
# rope.py), built as its model.py builds EVA02-CLIP-L-14-336's visual tower (rope, intp_freq, pt_hw_seq_len
# 16, naiveswiglu, subln, qkv_bias, LayerNorm eps 1e-6, class-token pooling) at width 32 / head width 16 and
# the real depth 24 and 24 x 24 grid, called as PuLID calls it (return_all_features=False,
# return_hidden=True, shuffle=False), float32 on CPU, weights and pixels from tests/formula_weights.py.
# diffserve's tower matched it to 4.3e-5 (hidden states) and 1.5e-6 (embedding) max |diff|; in float64 with
# the reference's own RoPE buffers to 1e-13.
EVA_REFERENCE_CFG = EvaVisionConfig(image_size=336, patch_size=14, width=32, depth=24, head_width=16, embed_dim=16)
EVA_EMBEDDING = [-1.036915, -0.521758, 0.144581, -0.324327, -0.065254, -0.720272, -1.340336, 0.950396, -0.576413,
                 -1.814147, 0.380534, -1.199032, 0.223063, -2.327486, -0.998134, -0.134081]
EVA_HIDDEN = [  # (sum, abs sum, class token [:4], patch token 300 [:4]) of the sequence entering blocks 4..20
    (-2172.616244, 41450.910071,
     [0.204432, -1.205541, 0.061434, 4.400664], [-3.361573, -5.532722, -1.51123, 0.760655]),
    (-2707.027102, 54590.887753,
     [0.79609, 0.034037, 3.764263, 3.283142], [-1.822384, -6.449894, 1.090114, 0.89912]),
    (-994.859869, 71857.900023,
     [0.096117, -2.846224, 5.849066, 6.099759], [-4.883536, -7.902567, 4.134547, 5.216694]),
    (15198.162121, 81380.833504,
     [-4.133916, -1.761261, 1.01886, 8.479092], [-7.825543, -8.199619, 2.399318, 7.483208]),
    (9911.757527, 87354.282216,
     [-1.603081, -3.166423, -0.759346, 7.326121], [-7.574255, -9.301838, 3.177227, 8.347036]),
]


def test_matches_eva_clip_reference_numbers():
    from .formula_weights import formula_input, formula_state

    cfg = EVA_REFERENCE_CFG
    assert cfg.hidden_state_blocks == (4, 8, 12, 16, 20)  # the real config's (the reference: 0 < i <= 20, i % 4 == 0)
    model = EvaVisionTransformer(cfg).eval()
    model.load_state_dict(formula_state(model.state_dict(), {"cls_token": 0.5, "pos_embed": 0.5}))
    with torch.no_grad():
        emb, hidden = model(formula_input(1, 3, 336, 336, salt=1, scale=1.5))
    torch.testing.assert_close(emb[0], torch.tensor(EVA_EMBEDDING), rtol=0, atol=1e-4)
    assert len(hidden) == 5
    for i, (h, (total, abs_total, cls, patch)) in enumerate(zip(hidden, EVA_HIDDEN)):
        h = h.double()
        assert abs(float(h.sum()) - total) < 1e-5 * abs_total, f"hidden state {i}: sum {float(h.sum())} != {total}"
        assert float(h.abs().sum()) == pytest.approx(abs_total, rel=1e-5), f"hidden state {i}: abs sum"
        torch.testing.assert_close(h[0, 0, :4].float(), torch.tensor(cls), rtol=1e-5, atol=2e-4,
                                   msg=lambda m, i=i: f"hidden state {i}, class token: {m}")
        torch.testing.assert_close(h[0, 300, :4].float(), torch.tensor(patch), rtol=1e-5, atol=2e-4,
                                   msg=lambda m, i=i: f"hidden state {i}, patch 300: {m}")
