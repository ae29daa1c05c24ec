"""Whole models: vsr_fast.BasicVSR / IconVSR (fused steps) vs the reference models, fp32, eager.

Random weights of the official sizes (c64b30), a short clip of 64x112 LR frames. torch.compile of the
whole reference model is left out by default (compiling the unrolled recurrence takes minutes on
small machines); VSR_FAST_BENCH_COMPILE_MODELS=1 adds it.
"""

import os
import warnings

import pytest
import torch

import vsr_fast
from vsr_fast import reference

MODELS = {
    "basicvsr": (vsr_fast.BasicVSR, reference.BasicVSR, {}),
    "iconvsr": (vsr_fast.IconVSR, reference.IconVSR, {"padding": 2}),
}
CLIP = (1, 5, 3, 64, 112)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMPLS = ["vsr_fast", "reference"] + (
    ["reference_compiled"] if os.environ.get("VSR_FAST_BENCH_COMPILE_MODELS") == "1" else []
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("impl", IMPLS)
def test_model(run_case, device, model, impl):
    fast_cls, ref_cls, kwargs = MODELS[model]
    torch.manual_seed(0)
    net = (fast_cls if impl == "vsr_fast" else ref_cls)(**kwargs).eval().to(device)
    fn = torch.compile(net) if impl == "reference_compiled" else net
    lrs = torch.rand(*CLIP, generator=torch.Generator().manual_seed(1)).to(device)

    def case():
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fn(lrs)

    run_case(f"{model} c64b30 fp32 clip {list(CLIP)} {device}", impl, case, torch.device(device), rounds=3)
