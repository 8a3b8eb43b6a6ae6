"""`dtype: auto` on the CPU: bfloat16 where the CPU computes it natively, float32 elsewhere (detected from the
CPU's feature flags, engine/models/precision.py). Fed flag sets, so both branches run on any machine."""

from __future__ import annotations

import platform

from diffserve.engine.models.precision import cpu_flags, native_bf16, resolve_dtype

# Real flag lines, shortened: an AVX-512 server without BF16 (Skylake-SP / Cascade Lake), a Cooper Lake / Zen 4
# one with AVX512_BF16, a Sapphire Rapids one with AMX, and Arm Neoverse N1 (no BF16) / V1 (BF16) Features lines.
SKYLAKE = "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni".split()
ZEN4 = "fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_vbmi2".split()
SAPPHIRE = "fpu sse2 avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8".split()
NEOVERSE_N1 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop".split()
NEOVERSE_V1 = "fp asimd aes sha2 crc32 atomics asimdrdm lrcpc dcpop sha3 sve svebf16 i8mm bf16 dgh rng".split()


def test_x86_needs_avx512_bf16_or_amx():
    assert not native_bf16(SKYLAKE, "x86_64")
    assert not native_bf16(["avx2", "fma", "f16c"], "x86_64")
    assert native_bf16(ZEN4, "x86_64")
    assert native_bf16(SAPPHIRE, "x86_64")
    assert native_bf16(["AVX512_BF16"], "AMD64")  # Windows spells the machine AMD64


def test_arm_needs_bf16_and_other_machines_stay_fp32():
    assert not native_bf16(NEOVERSE_N1, "aarch64")
    assert native_bf16(NEOVERSE_V1, "aarch64")
    assert native_bf16(["bf16"], "arm64")
    assert not native_bf16(["svebf16"], "aarch64")  # SVE's BF16 alone is not the base instructions
    assert not native_bf16(["avx512_bf16"], "aarch64")  # an x86 flag on another machine means nothing
    assert not native_bf16(["bf16", "avx512_bf16"], "riscv64")


def test_auto_follows_the_cpu_and_explicit_types_win():
    assert resolve_dtype("auto", "sd", "cpu", cpu_bf16=True) == "bf16"
    assert resolve_dtype("auto", "sdxl", "cpu", cpu_bf16=False) == "fp32"
    assert resolve_dtype("auto", "flux", "cpu", cpu_bf16=False) == "fp32"
    assert resolve_dtype("fp32", "sd", "cpu", cpu_bf16=True) == "fp32"
    assert resolve_dtype("bf16", "sd", "cpu", cpu_bf16=False) == "bf16"
    assert resolve_dtype("auto", "sd", "mps", cpu_bf16=True) == "fp32"  # the CPU's flags say nothing of other devices


def test_cpuinfo_is_read_from_the_flags_line(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: " + " ".join(ZEN4) + "\n\n"
                   "processor\t: 1\nflags\t\t: " + " ".join(ZEN4) + "\n")
    assert cpu_flags(x86) == set(ZEN4)
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: " + " ".join(NEOVERSE_V1) + "\n")
    assert native_bf16(cpu_flags(arm), "aarch64")
    assert cpu_flags(tmp_path / "missing") == set()
    # this machine: auto is what its own flags say
    here = native_bf16(cpu_flags(), platform.machine())
    assert resolve_dtype("auto", "sd", "cpu") == ("bf16" if here else "fp32")


def test_on_cuda_auto_is_bfloat16_for_the_families_whose_spec_says_so():
    """The precision rule is the family spec's: Flux and HiDream (trained in bfloat16; float16 overflows them)
    run bf16 on any CUDA device whatever the GPU says; an explicit type still wins."""
    from diffserve.engine.models.specs import FAMILIES

    bf16 = [spec.name for spec in FAMILIES if spec.bf16]
    assert bf16 == ["flux", "flux-kontext", "flux-redux", "flux-canny", "flux-depth", "flux-pulid", "hidream"]
    for name in bf16:
        assert resolve_dtype("auto", name, "cuda:1") == "bf16"
        assert resolve_dtype("fp16", name, "cuda") == "fp16"
        assert resolve_dtype("auto", name, "cpu", cpu_bf16=False) == "fp32"
