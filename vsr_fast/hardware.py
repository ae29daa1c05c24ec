"""What the machine can run fast: used by `--dtype auto` and the bf16 slow-path warning."""

import torch

__all__ = ["cpu_supports_bf16"]


def cpu_supports_bf16():
    """True when this CPU has bf16 matrix hardware (AVX512-BF16 or AMX), where oneDNN runs bf16
    convolutions several times faster than fp32; without it bf16 is emulated and far slower.

    Asks torch's own CPU feature detection (``torch.cpu._is_avx512_bf16_supported`` /
    ``_is_amx_tile_supported``, private helpers present in the torch releases vsr_fast supports);
    a torch without them counts as no.
    """
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, name, None)
        if check is not None:
            try:
                if check():
                    return True
            except RuntimeError:
                pass
    return False
