"""Cost of Flux PuLID's identity step at real size (random weights): what a PuLID request adds.

    .venv/bin/python bench/pulid_embedder.py [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--repeats 3] [--quick]

Times, per request, the torch parts of the official embedder at their released sizes: BiSeNet face
parsing on the 512 px aligned face (float32, as PuLID runs it), EVA02-CLIP-L-14-336's visual tower on
the 336 px face features image, and the IDFormer (PuLID-FLUX v0.9) making the 32 ID tokens, plus
the uncond pass true CFG adds. antelopev2's SCRFD and ArcFace ONNX models are not included (their
weights are not available offline). Also prints the weights' memory.
--quick (tests/test_benches.py runs it): the same parts at small widths (a 128 px face, a 56 px EVA tower), one
repeat, one torch thread: the code path in seconds, not the released sizes' figures.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small widths, 1 repeat, 1 torch thread")
    args = parser.parse_args()

    import torch

    from diffserve.engine.identity.eva_clip import EvaVisionConfig, EvaVisionTransformer, eva_pixels
    from diffserve.engine.identity.face_parsing import BiSeNet, BiSeNetConfig, face_features_image
    from diffserve.engine.identity.pulid import IDFormer
    from diffserve.engine.identity.config import IDFormerConfig

    if args.quick:
        args.repeats = 1
        torch.set_num_threads(1)
        bisenet_cfg = BiSeNetConfig(stem=16, widths=(16, 32, 64, 128), context=32, fuse=64, head=32, aux_head=16)
        eva_cfg = EvaVisionConfig(image_size=56, width=64, depth=6, head_width=16, embed_dim=32,
                                  hidden_state_blocks=(1, 2, 3, 4, 5))
        idf_cfg = IDFormerConfig(dim=32, depth=5, dim_head=8, heads=4, num_id_token=2, num_queries=4, output_dim=32,
                                 ff_mult=2, vit_dim=64, id_cond_dim=512 + 32, id_hidden=32)
        face_px = 128
    else:
        bisenet_cfg, eva_cfg, idf_cfg, face_px = BiSeNetConfig(), EvaVisionConfig(), IDFormerConfig(), 512
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device = torch.device(args.device)
    torch.manual_seed(0)
    parser_net = BiSeNet(bisenet_cfg).to(device).eval()
    eva = EvaVisionTransformer(eva_cfg).to(device, dtype).eval()
    id_former = IDFormer(idf_cfg).to(device, dtype).eval()
    face = torch.rand(1, 3, face_px, face_px, device=device)
    arcface = torch.randn(1, 512, device=device, dtype=dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> tuple[float, object]:
        fn()  # warm-up
        sync()
        times, out = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    with torch.inference_mode():
        parse_s, features = timed(lambda: face_features_image(parser_net, face))
        eva_s, (embedding, hidden) = timed(lambda: eva(eva_pixels(features, eva.cfg).to(dtype)))
        id_cond = torch.cat((arcface, embedding / embedding.norm(dim=-1, keepdim=True)), dim=-1)
        idf_s, _ = timed(lambda: id_former(id_cond, hidden))

    def mib(module) -> float:
        return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20

    print(f"device {device}, {args.dtype}, torch threads {torch.get_num_threads()}, median of {args.repeats}"
          f"{', --quick: small widths' if args.quick else ''}")
    print(f"{'part':38} {'ms':>9} {'weights MiB':>12}")
    print(f"{f'BiSeNet face parsing, {face_px} px (fp32)':38} {parse_s * 1e3:9.1f} {mib(parser_net):12.1f}")
    print(f"{f'EVA02-CLIP-L-14-336 visual, {eva_cfg.image_size} px':38} {eva_s * 1e3:9.1f} {mib(eva):12.1f}")
    print(f"{f'IDFormer ({idf_cfg.num_queries} ID tokens)':38} {idf_s * 1e3:9.1f} {mib(id_former):12.1f}")
    print(f"{'+ IDFormer uncond pass (true CFG)':38} {idf_s * 1e3:9.1f}")
    print(f"{'total per request (without antelopev2)':38} {(parse_s + eva_s + idf_s) * 1e3:9.1f}")


if __name__ == "__main__":
    main()
