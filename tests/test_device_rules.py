"""The precision rule and the CUDA build check as tables (vqclip.device): pure functions, so every GPU and CPU
kind is covered on any machine."""

import pytest

from vqclip.device import (
    CPU_BF16_MIN_PARAMS,
    Hardware,
    check_cuda_build,
    choose_precision,
    cuda_build_runs_on,
    fast_precisions,
    upscaler_precision,
)
from vqclip.errors import UsageError

SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16"})
ZEN4_ZEN5 = frozenset({"avx512f", "avx512_bf16"})
PLAIN_AVX512 = frozenset({"avx512f", "avx2"})
SHAPES_WORLD = 5_903_763  # shapes_f8's decoder + shapes-a's image tower
DEFAULT_MODELS = 130_364_803  # vqgan_imagenet_f16_16384's decoder + ViT-B/32's image tower


def cuda(major, minor):
    return Hardware("cuda", (major, minor))


@pytest.mark.parametrize(
    ("capability", "card", "auto"),
    [
        ((5, 2), "Maxwell (GTX 980, M40)", "fp32"),
        ((6, 0), "P100", "fp16"),
        ((6, 1), "GTX 1080, P40: fp16 at 1/64 rate", "fp32"),
        ((7, 0), "V100", "fp16"),
        ((7, 5), "T4, RTX 20x0", "fp16"),
        ((8, 0), "A100", "bf16"),
        ((8, 6), "RTX 30x0, A10", "bf16"),
        ((8, 9), "RTX 40x0, L4", "bf16"),
        ((9, 0), "H100, H200", "bf16"),
        ((10, 0), "B200", "bf16"),
        ((12, 0), "RTX 50x0", "bf16"),
    ],
)
def test_auto_precision_per_gpu_generation(capability, card, auto):
    gpu = cuda(*capability)
    assert choose_precision("auto", gpu) == auto, card
    # the size of the work does not matter on a GPU, and an explicit request is always kept
    assert choose_precision("auto", gpu, work_params=SHAPES_WORLD) == auto
    for asked in ("fp32", "bf16", "fp16"):
        assert choose_precision(asked, gpu) == asked


@pytest.mark.parametrize(
    ("flags", "work", "auto"),
    [
        (SAPPHIRE_RAPIDS, SHAPES_WORLD, "fp32"),  # tiny models: fp32 is as fast or faster, even with AMX
        (SAPPHIRE_RAPIDS, DEFAULT_MODELS, "bf16"),
        (SAPPHIRE_RAPIDS, CPU_BF16_MIN_PARAMS, "bf16"),
        (ZEN4_ZEN5, SHAPES_WORLD, "fp32"),
        (ZEN4_ZEN5, CPU_BF16_MIN_PARAMS - 1, "fp32"),
        (ZEN4_ZEN5, CPU_BF16_MIN_PARAMS, "bf16"),
        (ZEN4_ZEN5, DEFAULT_MODELS, "bf16"),
        (ZEN4_ZEN5, None, "bf16"),  # work not known: counted as large
        (PLAIN_AVX512, DEFAULT_MODELS, "fp32"),  # no fast bf16
        (PLAIN_AVX512, None, "fp32"),
        (frozenset(), None, "fp32"),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_auto_precision_on_cpus_by_flags_and_work(flags, work, auto):
    cpu = Hardware("cpu", cpu_flags=flags)
    assert choose_precision("auto", cpu, work_params=work) == auto
    assert choose_precision("fp32", cpu, work_params=DEFAULT_MODELS) == "fp32"
    assert choose_precision("bf16", cpu, work_params=SHAPES_WORLD) == "bf16"


def test_mps_runs_fp32_unless_asked():
    assert choose_precision("auto", Hardware("mps")) == "fp32"
    assert choose_precision("fp16", Hardware("mps")) == "fp16"


@pytest.mark.parametrize(
    ("hardware", "fast"),
    [
        (cuda(6, 0), {"fp16"}),
        (cuda(6, 1), set()),
        (cuda(7, 5), {"fp16"}),
        (cuda(9, 0), {"bf16", "fp16"}),
        (Hardware("cpu", cpu_flags=SAPPHIRE_RAPIDS), {"bf16", "fp16"}),
        (Hardware("cpu", cpu_flags=ZEN4_ZEN5), {"bf16"}),
        (Hardware("cpu", cpu_flags=PLAIN_AVX512), set()),
        (Hardware("mps"), set()),
    ],
)
def test_fast_precisions(hardware, fast):
    assert fast_precisions(hardware) == fast


@pytest.mark.parametrize(
    ("hardware", "asked", "runs"),
    [
        (cuda(6, 0), "auto", "fp16"),  # P100: bf16 only emulated, and no bf16 convolutions in cuDNN below 8.0
        (cuda(6, 1), "auto", "fp16"),  # Real-ESRGAN's own default on every GPU: fp16 storage is fine on 6.1
        (cuda(7, 0), "auto", "fp16"),  # V100
        (cuda(7, 5), "auto", "fp16"),  # T4
        (cuda(8, 0), "auto", "bf16"),
        (cuda(9, 0), "auto", "bf16"),
        (cuda(7, 5), "fp32", "fp32"),  # --precision governs the upscaler too
        (cuda(9, 0), "fp16", "fp16"),
        (Hardware("cpu", cpu_flags=SAPPHIRE_RAPIDS), "auto", "fp32"),
        (Hardware("cpu", cpu_flags=SAPPHIRE_RAPIDS), "bf16", "bf16"),
        (Hardware("mps"), "auto", "fp32"),
    ],
)
def test_upscaler_precision(hardware, asked, runs):
    assert upscaler_precision(asked, hardware) == runs


# torch.cuda.get_arch_list() of real builds
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_110", "sm_120", "compute_120"]
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
ARCH_SPECIFIC = ["sm_80", "sm_90a"]


@pytest.mark.parametrize(
    ("capability", "arch_list", "runs"),
    [
        ((6, 0), CU130, False),  # P100 on today's default wheels
        ((6, 1), CU130, False),
        ((7, 0), CU130, False),  # V100
        ((7, 5), CU130, True),  # T4
        ((8, 6), CU130, True),
        ((8, 9), CU130, True),  # sm_86 cubins run on 8.9 (same major, lower minor)
        ((9, 0), CU130, True),
        ((12, 1), CU130, True),
        ((13, 0), CU130, True),  # a newer GPU: compute_120 PTX is compiled at load
        ((6, 0), CU126, True),
        ((7, 0), CU126, True),
        ((6, 1), CU126, True),
        ((5, 0), CU126, True),
        ((3, 7), CU126, False),  # K80
        ((10, 0), CU126, False),  # no PTX to compile for it
        ((9, 0), ARCH_SPECIFIC, True),
        ((9, 1), ARCH_SPECIFIC, False),  # an "a" cubin runs on its own capability only
        ((7, 5), [], True),  # not known: not refused
    ],
)
def test_cuda_build_runs_on(capability, arch_list, runs):
    assert cuda_build_runs_on(capability, arch_list) is runs


def test_a_gpu_the_build_cannot_run_is_refused_in_one_sentence():
    with pytest.raises(UsageError) as info:
        check_cuda_build((7, 0), CU130, "Tesla V100-SXM2-16GB")
    message = info.value.message
    assert "Tesla V100-SXM2-16GB" in message and "7.0" in message and "sm_70" in message
    assert "cu126" in message and "--device cpu" in message
    assert message.count(". ") == 0  # one sentence
    check_cuda_build((7, 5), CU130)  # a T4 runs: nothing raised
