"""What the machine can run fast: used by `--dtype auto` and the models' slow-precision warning."""

import torch

__all__ = ["cpu_supports_avx2_fma", "cpu_supports_bf16", "cpu_supports_fp16"]


def _cpu_has(*features, every=False):
    """Whether torch's CPU feature detection (cpuinfo, ``torch.cpu.get_capabilities``) reports any of
    `features`; the C++ kernels ask the same map (csrc/cpu/onednn_conv.h). A torch without it counts
    as no."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is None:
        return False
    try:
        capabilities = get()
    except RuntimeError:
        return False
    found = [capabilities.get(name, False) is True for name in features]
    return all(found) if every else any(found)


def cpu_supports_avx2_fma():
    """True when this CPU has AVX2 and FMA, where vsr_fast's float32 CPU convolutions (3x3, in the
    trunks and the reconstruction tail) run by Winograd F(4x4, 3x3) rather than through oneDNN. The
    C++ kernels ask the compiler's own CPU check (csrc/cpu/cpu_dispatch.h), which reads the same bits."""
    return _cpu_has("avx2", "fma3", every=True)


def cpu_supports_bf16():
    """True when this CPU has bf16 dot-product hardware (AVX512-BF16 or AMX-BF16), where oneDNN runs
    bf16 convolutions several times faster than fp32 and vsr_fast's CPU kernels take oneDNN's fused
    bf16 path; without it bf16 is emulated and far slower than fp32."""
    return _cpu_has("avx512_bf16", "amx_bf16")


def cpu_supports_fp16():
    """True when this CPU has fp16 arithmetic hardware (AVX512-FP16 or AMX-FP16), where ATen's float16
    convolutions run through oneDNN; without it they are emulated and far slower than fp32."""
    return _cpu_has("avx512_fp16", "amx_fp16")
