"""PuLID-FLUX's IDFormer, PerceiverAttentionCA and identity injection (diffserve/engine/identity/pulid.py) against
numbers recorded from the reference code, ToTheBeginning/PuLID:

* `pulid/encoders_flux.py` (IDFormer, PerceiverAttentionCA), run with the weights and inputs below;
* `flux/model.py` (Flux.forward): after double-stream block i with i % double_interval == 0 and single-stream
  block i with i % single_interval == 0, in that order over one CA index,
  `img = img + id_weight * pulid_ca[ca_idx](id, img)`, where a single-stream block's `img` is the image
  part of its joint [text, image] output. That rule was restated outside this repo on the blocks of the
  tiny diffusers FluxTransformer2DModel built here, and its output recorded.

The reference run was float32 on CPU; diffserve matched every number here exactly (max |diff| 0), and
also at the real widths (IDFormer 1024/16 heads/10 layers, CA 3072/2048) and in bfloat16. Weights and
inputs come from tests/formula_weights.py (a formula, not an RNG), so the numbers hold on any machine up
to float rounding.

How much float rounding: the Flux injection numbers below go through 8 transformer blocks and 4 CA modules
in float32, and another CPU's kernels round differently. On this project's CI machine (Xeon with
AVX-512) the same code gives first values up to 7.4e-5 away from the recorded ones (1.1e-5 for plain Flux),
while a float64 run here agrees with its own float32 run to 1e-6 -- the recorded float32 run itself was off
by that much, and no library change is involved (diffusers 0.40.0, 0.41.0, 0.42.0 and 0.42.1 all give the
same numbers here). So the Flux comparisons allow 2e-4 (FLUX_TOLERANCE); a wrong block, CA order or
id_weight moves them by 1e-2 or more. The numbers depend on diffusers' Flux internals: RECORDED_WITH names
the versions they were checked against, and a test says so when the lock moves past them.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel

from diffserve.engine.identity.pulid import IDFormer, PerceiverAttentionCA, PuLIDFlux, pulid_injection
from diffserve.engine.identity.config import IDFormerConfig, PuLIDConfig, ca_count

from .formula_weights import formula_input, formula_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------- recorded from the reference

# The library versions these numbers were last checked against (requirements/test.txt; torch: the Makefile).
RECORDED_WITH = {"diffusers": "0.42.1", "torch": "2.13.0"}
FLUX_TOLERANCE = 2e-4  # float32 across CPUs, measured: see the module docstring

# IDFormer(dim=64, depth=10, dim_head=16, heads=4, num_id_token=5, num_queries=8, output_dim=48) (its
# ViT/ArcFace widths are the reference's constants: 1024 and 1280); output (2, 8, 48).
IDFORMER = {
    "first": [4.020731, -5.798738, -0.534315, 3.811808, 0.083589, -4.333074],
    "last": [-2.549125, -2.995392, -3.746925, -0.865153, 3.90901, -2.838356],
    "sums": [(207.939436, 934.493453), (155.32155, 861.829594)],  # (sum, abs sum) per sample
    # all-zero condition and hidden states (PuLID's cal_uncond)
    "uncond_first": [-0.574151, -6.086798, -1.882846, 1.756839, 0.55185, -3.254673],
    "uncond_sums": (-5.283516, 984.47816),
}
# PerceiverAttentionCA() at the real widths (dim 3072, dim_head 128, heads 16, kv_dim 2048): ID tokens
# (1, 32, 2048) against image states (2, 16, 3072); output (2, 16, 3072).
CA_REAL = {
    "first": [0.09912, 0.172548, 0.146116, 0.178614, -0.462, 0.244877],
    "last": [0.571432, -0.341695, -0.040993, 0.174147, -0.199574, -0.002395],
    "sums": [(40.3768, 15289.482844), (77.525613, 15182.73342)],
}
# The tiny FluxTransformer2DModel below (3 double + 5 single blocks: CA after double 0, 2 and single 0, 4),
# four CA(dim 32, dim_head 16, heads 2, kv_dim 48), id_weight 0.8; output (2, 16, 64).
FLUX_PULID = {
    "plain_first": [-2.254214, 0.385499, 1.056083, 0.761432, -0.910391, -0.117209],
    "plain_sums": [(76.006205, 895.854808), (14.683241, 906.142326)],
    "first": [-3.185197, -0.356812, 2.160956, -1.591575, 0.65098, -0.904947],
    "last": [-0.081536, -1.685485, 0.889877, 0.390117, -1.798511, -0.672686],
    "sums": [(-34.575633, 839.740427), (-72.606511, 861.753129)],
    # the negative prompt's pass with the no-identity tokens
    "neg_first": [-0.42821, -0.321305, 0.227265, 0.509913, 0.412613, -0.627045],
    "neg_sums": [(-16.255309, 763.13689), (-54.400526, 743.289725)],
}


def assert_numbers(out: torch.Tensor, first: list[float], sums: list[tuple[float, float]],
                   last: list[float] | None = None, what: str = "output", tol: float = 1e-5) -> None:
    """out[0, 0, :6] == first, out[-1, -1, -6:] == last, and per sample (sum, abs sum) == sums."""
    torch.testing.assert_close(out[0, 0, :6], torch.tensor(first), rtol=tol, atol=tol,
                               msg=lambda m: f"{what}, first values: {m}")
    if last is not None:
        torch.testing.assert_close(out[-1, -1, -6:], torch.tensor(last), rtol=tol, atol=tol,
                                   msg=lambda m: f"{what}, last values: {m}")
    assert len(out) == len(sums)
    for b, (total, abs_total) in enumerate(sums):
        got = out[b].double()
        assert abs(float(got.sum()) - total) < tol * abs_total, f"{what}, sample {b}: sum {float(got.sum())}"
        assert float(got.abs().sum()) == pytest.approx(abs_total, rel=tol), f"{what}, sample {b}: abs sum"


def test_numbers_were_checked_against_the_installed_versions():
    """When the lock moves diffusers (or the Makefile torch), re-run this module, compare, and update
    RECORDED_WITH (or the numbers, with the reason) in the same commit."""
    import diffusers

    installed = {"diffusers": diffusers.__version__, "torch": torch.__version__.split("+")[0]}
    assert installed == RECORDED_WITH, f"golden numbers recorded with {RECORDED_WITH}; installed {installed}"


# ---------------------------------------------------------------- IDFormer and CA


def test_idformer_matches_reference_numbers():
    cfg = IDFormerConfig(dim=64, depth=10, dim_head=16, heads=4, num_id_token=5, num_queries=8, output_dim=48)
    model = IDFormer(cfg).eval()
    model.load_state_dict(formula_state(model.state_dict(), {"latents": 0.5}))
    cond = formula_input(2, 1280, salt=2)
    hidden = [formula_input(2, 17, 1024, salt=10 + i, scale=3.0) for i in range(5)]
    with torch.no_grad():
        out = model(cond, hidden)
        uncond = model(torch.zeros_like(cond), [torch.zeros_like(h) for h in hidden])
    assert out.shape == (2, 8, 48)
    assert_numbers(out, IDFORMER["first"], IDFORMER["sums"], IDFORMER["last"], what="IDFormer")
    assert_numbers(uncond[:1], IDFORMER["uncond_first"], [IDFORMER["uncond_sums"]], what="IDFormer, no identity")


def test_cross_attention_at_real_width_matches_reference_numbers():
    ca = PerceiverAttentionCA(dim=3072, dim_head=128, heads=16, kv_dim=2048).eval()
    ca.load_state_dict(formula_state(ca.state_dict()))
    ids = formula_input(1, 32, 2048, salt=3, scale=2.0)
    image = formula_input(2, 16, 3072, salt=4, scale=2.0)
    with torch.no_grad():
        out = ca(ids, image)
        expanded = ca(ids.expand(2, -1, -1), image)
    assert_numbers(out, CA_REAL["first"], CA_REAL["sums"], CA_REAL["last"], what="CA")
    torch.testing.assert_close(expanded, out, rtol=0, atol=0)  # one identity for every image of the batch


def test_official_layout_has_the_reference_keys_and_parameter_count():
    """The reference's PuLIDPipeline: IDFormer() and 19 // 2 + 38 // 4 (+1 +1 for the remainders) = 20
    PerceiverAttentionCA(): 312 tensors, 571,033,600 parameters (counted on the reference modules)."""
    assert ca_count(19, 38, 2, 4) == 19 // 2 + 38 // 4 + 1 + 1 == 20
    with torch.device("meta"):
        state = PuLIDFlux(PuLIDConfig()).state_dict()
    encoder = [k for k in state if k.startswith("pulid_encoder.")]
    ca = [k for k in state if k.startswith("pulid_ca.")]
    # latents, proj_out; 10 layers x (attention 7 + feed-forward 4); 6 MLPs (mapping_0..4, id mapping) x 10
    assert len(encoder) == 2 + 10 * 11 + 6 * 10
    assert len(ca) == 20 * 7 and {k.split(".", 2)[2] for k in ca} == {
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "to_q.weight", "to_kv.weight", "to_out.weight"}
    assert sum(v.numel() for v in state.values()) == 571_033_600


# ---------------------------------------------------------------- injection into diffusers' Flux


@pytest.fixture(scope="module")
def flux():
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, out_channels=64, num_layers=3, num_single_layers=5, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6)).eval()
    transformer.load_state_dict(formula_state(transformer.state_dict()))
    ca = torch.nn.ModuleList(PerceiverAttentionCA(dim=32, dim_head=16, heads=2, kv_dim=48) for _ in range(4))
    ca.load_state_dict(formula_state(ca.state_dict()))
    return transformer, ca.eval()


def flux_inputs(batch: int, salt: int) -> dict:
    side, n_txt = 4, 7
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] += torch.arange(side)[:, None]
    img_ids[..., 2] += torch.arange(side)[None, :]
    return dict(hidden_states=formula_input(batch, side * side, 64, salt=salt),
                encoder_hidden_states=formula_input(batch, n_txt, 32, salt=salt + 1),
                pooled_projections=formula_input(batch, 32, salt=salt + 2),
                timestep=torch.full((batch,), 0.7), guidance=torch.full((batch,), 3.5),
                img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(n_txt, 3))


def test_injection_matches_the_reference_rule_numbers(flux):
    transformer, ca = flux
    assert ca_count(3, 5, 2, 4) == len(ca) == 4
    ids = formula_input(1, 32, 48, salt=5, scale=2.0)
    uncond = formula_input(1, 32, 48, salt=6, scale=2.0)
    positive = flux_inputs(2, 20)
    negative = dict(flux_inputs(2, 30), hidden_states=positive["hidden_states"])
    with torch.no_grad():
        plain = transformer(**positive, return_dict=False)[0]
        with pulid_injection(transformer, ca, ids, 0.8, 2, 4, uncond_tokens=uncond):
            steps = [(transformer(**positive, return_dict=False)[0], transformer(**negative, return_dict=False)[0])
                     for _ in range(2)]  # diffusers' true-CFG loop: positive, then negative, every step
        after = transformer(**positive, return_dict=False)[0]
    assert_numbers(plain, FLUX_PULID["plain_first"], FLUX_PULID["plain_sums"], what="plain Flux", tol=FLUX_TOLERANCE)
    for step, (pos, neg) in enumerate(steps):
        assert_numbers(pos, FLUX_PULID["first"], FLUX_PULID["sums"], FLUX_PULID["last"],
                       what=f"step {step}, with identity", tol=FLUX_TOLERANCE)
        assert_numbers(neg, FLUX_PULID["neg_first"], FLUX_PULID["neg_sums"], what=f"step {step}, negative pass",
                       tol=FLUX_TOLERANCE)
    assert torch.equal(after, plain)  # the hooks are gone


def test_each_chosen_block_gets_its_own_ca_module_on_the_image_stream(flux):
    """The rule, block by block: a CA module that records its input sees, in CA order, the image part
    (16 tokens, not the 7 + 16 joint sequence) of double blocks 0, 2 and single blocks 0, 4."""
    transformer, ca = flux
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.k = k

        def forward(self, tokens, image):
            seen.append((self.k, tuple(image.shape)))
            return torch.zeros_like(image)

    outputs = {}
    blocks = [("double", i, b) for i, b in enumerate(transformer.transformer_blocks)]
    blocks += [("single", i, b) for i, b in enumerate(transformer.single_transformer_blocks)]
    def shape_of_image_part(key):
        def hook(_block, _args, out):
            outputs[key] = tuple(out[1].shape)  # returns None: the output is left as it is
        return hook

    handles = [b.register_forward_hook(shape_of_image_part((kind, i))) for kind, i, b in blocks]
    try:
        with torch.no_grad(), pulid_injection(transformer, torch.nn.ModuleList(Recorder(k) for k in range(4)),
                                              torch.zeros(1, 32, 48), 1.0, 2, 4):
            transformer(**flux_inputs(1, 40), return_dict=False)
    finally:
        for h in handles:
            h.remove()
    assert seen == [(k, (1, 16, 32)) for k in range(4)]
    assert len(outputs) == 8 and set(outputs.values()) == {(1, 16, 32)}  # each block's second output: the image
