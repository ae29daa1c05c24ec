"""Long videos in bounded memory: `upscale(model, frames)` yields, frame by frame, what
``model(frames[None])[0]`` would return, while holding O(K) recurrent features whatever the length T.

The exact engine (three trunk sweeps where the full model runs two):

1. Backward sweep, frame T-1 down to 0, in segments of K frames (the last segment first): the
   flows of the segment's neighbouring pairs (SPyNet, ``flow_batch`` pairs per call), IconVSR's refill
   features at its keyframes, and the backward states. Flows and refill features are spilled to
   temporary files; the backward state entering each segment from the right (frames K, 2K, ...) is
   spilled as that segment's checkpoint; the states of the first segment, the last ones computed, are
   kept.
2. Segments in order: the segment's backward states are recomputed from its checkpoint with the
   spilled flows and refill features (the first segment's are already there); the forward sweep runs
   through the segment, and each frame is fused and reconstructed as soon as its forward state
   exists. The forward state entering each segment is spilled too, so that with both checkpoints a
   segment depends on nothing else (`LongVideo.segment`).

Every step is the model's own hook (``pair_flows``, ``backward_step``, ``forward_step``,
``fuse_and_reconstruct`` for BasicVSR, and for IconVSR ``reconstruct``, ``spatial_padding``,
``keyframe_indices``, ``refill_window``, ``compute_refill_feature``; docs/design.md, "Step hooks")
on the same shapes as in the full model, so the engine works with the reference and the fast models
alike and its frames are the model's bit for bit, except for SPyNet: the full model computes the
flows of all T-1 pairs in one batch, the engine a few pairs at a time, and a multi-threaded
convolution library may partition a small convolution differently for another batch size (seen with
oneDNN on 2 threads: flows differ by ~5e-6 at 16x20; identical on one thread and at 64x112). Where
the flows agree, everything else does.

Mirror-extended clips (T even, frame T-1-i == frame i) are detected as the model detects them, and
the forward flows are then read back from the backward ones, as the model does; equal frames give
the flow network equal inputs, so this only saves time and never changes a value.

Spill versus recompute: one SPyNet pair costs ~0.1-0.3 s at 64x112-68x160 on the 2-core development
machine, writing and reading its flow back (8 bytes per pixel) well under a millisecond; IconVSR's
EDVR refill costs more still. Both are therefore computed once and spilled. Temporary files are read
back with explicit reads (no mmap), so host memory does not grow with T; disk use is per frame 8
bytes/pixel of flow, the frames themselves when they come from an iterator, and for IconVSR one state
per keyframe.

Approximate modes (documented as such, measured in the README): ``chunk``/``overlap`` runs the model
on independent chunks with ``overlap`` frames of context on each side; ``tile``/``tile_overlap``
cuts the frames into overlapping spatial tiles, upscales each tile's sequence (exactly, or in chunks)
and keeps the centre of each overlap from the nearer tile.
"""

import os
import tempfile
from collections.abc import Sequence

import torch

from .reference.basicvsr import _RecurrentVSRBase
from .reference.iconvsr import IconVSR

__all__ = ["LongVideo", "upscale", "segment_length_for", "DEFAULT_MAX_MEMORY"]

# Feature memory allowed when neither segment_length nor max_memory is given: a few hundred frames
# of a 180x320 state would be ~15 MB each, so this keeps K near 16 there and a clip of small frames in
# a few segments; every K costs the same number of trunk steps except that the first segment is
# not recomputed.
DEFAULT_MAX_MEMORY = 256 * 2**20
# states alive besides the segment's backward states: the forward state, the backward checkpoint
# being read and the fused feature / refill feature of the step in flight
_STATES_IN_FLIGHT = 3


class _Spill:
    """Tensors of one shape, dtype and memory format in slots of an anonymous temporary file, read
    back with explicit reads (no mmap: the process holds one tensor at a time, however long the file).
    A channels_last tensor comes back channels_last, so the step that consumes it runs the same kernel
    as on the tensor that was written."""

    def __init__(self, directory=None):
        self._file = tempfile.TemporaryFile(dir=directory)
        self._fd = self._file.fileno()
        self._layout = None  # (shape, dtype, channels_last)
        self._nbytes = 0

    @staticmethod
    def _layout_of(tensor):
        channels_last = (
            tensor.dim() == 4
            and not tensor.is_contiguous()
            and tensor.is_contiguous(memory_format=torch.channels_last)
        )
        return tuple(tensor.shape), tensor.dtype, channels_last

    def write(self, slot, tensor):
        layout = self._layout_of(tensor)
        if self._layout is None:
            self._layout, self._nbytes = layout, tensor.numel() * tensor.element_size()
        elif layout != self._layout:
            raise ValueError(f"vsr_fast.upscale: spilled tensors must all be {self._layout}, got {layout}")
        tensor = tensor.detach().to("cpu")
        tensor = tensor.permute(0, 2, 3, 1) if layout[2] else tensor
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        written = os.pwrite(self._fd, memoryview(data), slot * self._nbytes)
        if written != self._nbytes:
            raise OSError(
                f"vsr_fast.upscale: short write to a temporary file ({written} of "
                f"{self._nbytes} bytes; is the disk full?)"
            )

    def read(self, slot, device=None):
        buf = bytearray(self._nbytes)
        got = os.preadv(self._fd, [buf], slot * self._nbytes)
        if got != self._nbytes:
            raise OSError(f"vsr_fast.upscale: short read from a temporary file (slot {slot})")
        shape, dtype, channels_last = self._layout
        tensor = torch.frombuffer(buf, dtype=torch.uint8).view(dtype)
        if channels_last:
            n, c, h, w = shape
            tensor = tensor.view(n, h, w, c).permute(0, 3, 1, 2)
        else:
            tensor = tensor.view(shape)
        return tensor if device is None else tensor.to(device)

    def close(self):
        self._file.close()


class _TensorFrames:
    """Frames of a (T, 3, H, W) tensor or a sequence of (3, H, W) tensors, as they are."""

    def __init__(self, frames):
        self._frames = frames

    def __len__(self):
        return len(self._frames)

    def __getitem__(self, i):
        return self._frames[i]

    def close(self):
        pass


class _SpilledFrames:
    """Frames of a one-shot iterable, spilled as they come (uint8 frames stay uint8)."""

    def __init__(self, iterable, directory=None, progress=None):
        self._spill = _Spill(directory)
        self._t = 0
        try:
            for frame in iterable:
                frame = _as_frame(frame, self._t)
                self._spill.write(self._t, frame)
                self._t += 1
                if progress is not None:
                    progress("read", self._t, None)
        except BaseException:
            self._spill.close()
            raise

    def __len__(self):
        return self._t

    def __getitem__(self, i):
        return self._spill.read(i)

    def close(self):
        self._spill.close()


class _CroppedFrames:
    """A spatial window of another frame source (tiles)."""

    def __init__(self, frames, y, x, h, w):
        self._frames, self._box = frames, (y, x, h, w)

    def __len__(self):
        return len(self._frames)

    def __getitem__(self, i):
        y, x, h, w = self._box
        return self._frames[i][:, y : y + h, x : x + w]

    def close(self):
        pass


def _as_frame(frame, index):
    if not torch.is_tensor(frame):
        try:
            frame = torch.as_tensor(frame)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"vsr_fast.upscale: frame {index} is a {type(frame).__name__}, not a "
                f"(3, H, W) tensor or array"
            ) from e
    if frame.dim() != 3 or frame.size(0) != 3 or frame.size(1) < 1 or frame.size(2) < 1:
        raise ValueError(f"vsr_fast.upscale: frame {index} must be (3, H, W) RGB, got {list(frame.shape)}")
    if frame.dtype != torch.uint8 and not frame.is_floating_point():
        raise TypeError(
            f"vsr_fast.upscale: frame {index} is {frame.dtype}; expected uint8 (0-255) or a "
            f"floating dtype (0-1)"
        )
    return frame


def _model_kind(model):
    if isinstance(model, IconVSR):
        return "iconvsr"
    if isinstance(model, _RecurrentVSRBase):
        return "basicvsr"
    raise TypeError(
        f"vsr_fast.upscale: model must be a BasicVSR or IconVSR (vsr_fast or "
        f"vsr_fast.reference), got {type(model).__name__}"
    )


def _model_dtype_device(model):
    param = next(p for p in model.parameters() if p.is_floating_point())
    return param.dtype, param.device


def _state_bytes(model, h, w, dtype):
    """Bytes of one recurrent state, plus one frame pair's flow (spilled, but held while in use)."""
    if isinstance(model, IconVSR):
        h, w = h + (4 - h % 4) % 4, w + (4 - w % 4) % 4
    elem = torch.empty((), dtype=dtype).element_size()
    return model.mid_channels * h * w * elem + 2 * h * w * max(elem, 4)


def segment_length_for(model, t, h, w, max_memory, *, dtype=None):
    """The segment length K that keeps the engine's feature memory within ``max_memory`` bytes.

    Feature memory is ``(K + 3) * state``: the K backward states of the segment being emitted, plus
    the forward state, the backward checkpoint and the step's fused (or refill) feature; ``state``
    is ``mid_channels * H * W`` elements of the model's dtype (H, W padded to multiples of 4 for
    IconVSR) plus one fp32 flow. Checkpoints, flows and refill features are spilled to disk, so the
    memory does not depend on T. Each step's own activations (trunk, SPyNet, the x4 tail) come on
    top and depend only on the frame size.
    """
    if dtype is None:
        dtype = _model_dtype_device(model)[0]
    state = _state_bytes(model, h, w, dtype)
    k = int(max_memory // state) - _STATES_IN_FLIGHT
    if k < 1:
        raise ValueError(
            f"vsr_fast.upscale: max_memory={max_memory} bytes is too small for {h}x{w} frames: one "
            f"recurrent state is {state} bytes and the engine needs at least {_STATES_IN_FLIGHT + 1} "
            f"({(_STATES_IN_FLIGHT + 1) * state} bytes)"
        )
    return min(k, t)


def _to_model_input(frame, dtype, device):
    """A (3, H, W) frame as the model's input: uint8 as x / 255 in fp32, then the model's dtype."""
    x = frame.to(device)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255
    return x.to(dtype)


class LongVideo:
    """The exact engine over one clip (what `upscale` runs); `frames()` yields the HR frames.

    ``source`` gives random access to the T LR frames (``source[i]`` is (3, H, W), uint8 or float).
    Segments are ``[jK, min((j+1)K, T))``. `backward_sweep` computes and spills the flows, refill
    features and backward checkpoints; after it, `segment(j, ...)` needs only its two checkpoints
    (`backward_checkpoint(j)`, `forward_checkpoint(j)`), so segments can run in any order, or in
    several processes given the checkpoints: a process that did not run the sweep calls
    `prepare_segment(j)` for the segment's flows and refill features (`vsr_fast.distributed`).
    BasicVSR's forward checkpoints can also come from `forward_sweep`, which needs no backward state.
    """

    def __init__(self, model, source, segment_length, *, flow_batch=4, spill_dir=None, progress=None):
        self.model = model
        self.kind = _model_kind(model)
        self.source = source
        self.t = len(source)
        self.segment_length = int(segment_length)
        self.flow_batch = int(flow_batch)
        self.progress = progress
        self.dtype, self.device = _model_dtype_device(model)
        self.size = tuple(int(s) for s in source[0].shape[1:])
        _check_clip(model, self.t, *self.size)
        self.segments = [
            (s, min(s + self.segment_length, self.t)) for s in range(0, self.t, self.segment_length)
        ]
        keyframes = model.keyframe_indices(self.t) if self.kind == "iconvsr" else []
        self._keyframe_slot = {i: slot for slot, i in enumerate(keyframes)}
        self._spill_dir = spill_dir
        self._flows = self._refill = None
        self._checkpoints = {}
        self._first_states = None
        self._mirrored = None
        self._swept = False
        self._prepared = set()  # segments whose flows and refill features are spilled here

    # ---- inputs --------------------------------------------------------------------------------

    def _input(self, i):
        """Frame i as the model sees it, (1, 3, H, W); IconVSR's frames reflect-padded to multiples of 4."""
        x = _to_model_input(self.source[i], self.dtype, self.device)[None]
        if self.kind == "iconvsr":
            x = self.model.spatial_padding(x[:, None])[:, 0]
        return x

    def _is_mirrored(self):
        """The model's mirror test on the frames it sees: T even and frame T-1-i == frame i."""
        if self._mirrored is None:
            t = self.t
            self._mirrored = t % 2 == 0 and all(
                torch.equal(self._input(i), self._input(t - 1 - i)) for i in range(t // 2)
            )
        return self._mirrored

    def _pair_flows(self, pairs):
        """Flows of pairs (ref, supp) of frame indices, in order, computed ``flow_batch`` pairs per
        SPyNet call as they are asked for (so that the work and the progress advance together)."""
        for b in range(0, len(pairs), self.flow_batch):
            chunk = pairs[b : b + self.flow_batch]
            ref = torch.cat([self._input(r) for r, _ in chunk])
            supp = torch.cat([self._input(s) for _, s in chunk])
            yield from self.model.pair_flows(ref, supp).split(1)

    def _refill_feature(self, i, compute):
        slot = self._keyframe_slot.get(i)
        if slot is None:
            return None
        if not compute:
            return self._refill.read(slot, self.device)
        window = torch.stack([self._input(q)[0] for q in self.model.refill_window(self.t, i)])[None]
        feature = self.model.compute_refill_feature(window)
        self._refill.write(slot, feature)
        return feature

    # ---- sweeps --------------------------------------------------------------------------------

    def _backward_segment(self, j, feat, compute):
        """Backward steps over segment j from ``feat``, the state of the frame after it (zeros after
        the last frame). ``compute``: compute and spill the flows and refill features (the first
        sweep), else read them back. Returns the segment's states, first frame first."""
        start, end = self.segments[j]
        if compute:  # pair i warps frame i+1 onto frame i, in the order the steps need them
            flows = self._pair_flows([(i, i + 1) for i in range(min(end, self.t - 1) - 1, start - 1, -1)])
        states = [None] * (end - start)
        for i in range(end - 1, start - 1, -1):
            if i == self.t - 1:
                flow = None
            elif compute:
                flow = next(flows)
                self._flows.write(i, flow)
            else:
                flow = self._flows.read(i, self.device)
            refill = self._refill_feature(i, compute)
            if self.kind == "iconvsr":
                feat = self.model.backward_step(self._input(i), feat, flow, refill)
            else:
                feat = self.model.backward_step(self._input(i), feat, flow)
            states[i - start] = feat
            if self.progress is not None:
                if compute:
                    self.progress("backward", self.t - i, self.t)
                else:
                    self.progress("recompute", end - i, end - start)
        return states

    def _open_spills(self):
        if self._flows is None:
            self._flows = _Spill(self._spill_dir)
            self._checkpoints = {"backward": _Spill(self._spill_dir), "forward": _Spill(self._spill_dir)}
            if self.kind == "iconvsr":
                self._refill = _Spill(self._spill_dir)

    def _zero_state(self):
        """The model's zero state: lrs.new_zeros(n, mid_channels, h, w)."""
        h, w = self._input(0).shape[2:]
        return torch.zeros(1, self.model.mid_channels, h, w, dtype=self.dtype, device=self.device)

    @torch.no_grad()
    def backward_sweep(self):
        """Step 1: flows, refill features and backward checkpoints of the whole clip."""
        if self._swept or self._prepared:
            raise RuntimeError("LongVideo.backward_sweep: already run (or segments prepared without it)")
        self._open_spills()
        self._swept = True
        self._prepared = set(range(len(self.segments)))
        feat = self._zero_state()
        for j in range(len(self.segments) - 1, -1, -1):
            states = self._backward_segment(j, feat, compute=True)
            feat = states[0]
            if j > 0:
                # the state of frame start_j enters segment j-1 from the right
                self._checkpoints["backward"].write(j - 1, feat)
                del states
        self._first_states = states

    def backward_checkpoint(self, j):
        """Backward state of the frame just after segment j (None for the last segment)."""
        if j == len(self.segments) - 1:
            return None
        return self._checkpoints["backward"].read(j, self.device)

    def set_backward_checkpoint(self, j, state):
        """Record segment j's backward checkpoint computed elsewhere (by another process's sweep)."""
        self._open_spills()
        self._checkpoints["backward"].write(j, state)

    def forward_checkpoint(self, j):
        """Forward state of the frame just before segment j (None for the first segment), as recorded
        by `set_forward_checkpoint` (which `frames` does as it goes)."""
        return None if j == 0 else self._checkpoints["forward"].read(j - 1, self.device)

    def set_forward_checkpoint(self, j, state):
        self._open_spills()
        self._checkpoints["forward"].write(j - 1, state)

    @torch.no_grad()
    def prepare_segment(self, j):
        """What `segment(j)` needs from the backward sweep besides the checkpoints, without the
        sweep: the segment's flows and refill features, computed and spilled as the sweep does (the
        same SPyNet batches, so the same values). For a process that is given the checkpoints and
        emits only some segments."""
        if j in self._prepared:
            return
        self._open_spills()
        start, end = self.segments[j]
        pairs = [(i, i + 1) for i in range(min(end, self.t - 1) - 1, start - 1, -1)]
        for (i, _), flow in zip(pairs, self._pair_flows(pairs)):
            self._flows.write(i, flow)
        for i in range(end - 1, start - 1, -1):
            self._refill_feature(i, compute=True)
        self._prepared.add(j)

    @torch.no_grad()
    def forward_sweep(self):
        """BasicVSR's forward checkpoints without the backward states, which its forward branch
        does not read: one forward step per frame and the forward flows (computed per segment as
        `segment` computes them). Independent of `backward_sweep`, so another process can run it at
        the same time. IconVSR's forward steps read the backward features: there the checkpoints
        come from `segment(j, ..., reconstruct=False)` in order, after the backward sweep."""
        if self.kind != "basicvsr":
            raise RuntimeError("LongVideo.forward_sweep: IconVSR's forward branch needs the backward states")
        # zeros_like(backward state of frame 0) in the engine: the backward steps keep the layout of
        # the contiguous zero state they start from
        feat = self._zero_state()
        for j, (start, end) in enumerate(self.segments[:-1]):
            flows = self._forward_flows(start, end)
            for i in range(start, end):
                feat = self.model.forward_step(self._input(i), feat, next(flows) if i > 0 else None)
            self.set_forward_checkpoint(j + 1, feat)
            if self.progress is not None:
                self.progress("forward", end, self.t)

    def _forward_flows(self, start, end):
        """The flows that warp frame i-1 onto frame i, for i in the segment (i >= 1), in order."""
        frames = range(max(start, 1), end)
        # without the sweep here, the mirror images' backward flows are not: compute the pairs, which
        # are the same frames
        if self._swept and self._is_mirrored():
            # frames i, i-1 are frames T-1-i, T-i, whose backward flow is spilled: the model's shortcut
            return (self._flows.read(self.t - 1 - i, self.device) for i in frames)
        return self._pair_flows([(i, i - 1) for i in frames])

    @torch.no_grad()
    def segment(self, j, backward_checkpoint=None, forward_checkpoint=None, reconstruct=True):
        """Generator of segment j's HR frames (3, 4H, 4W); its return value (``yield from``) is the
        forward state of the segment's last frame: the next segment's forward checkpoint.

        Needs `backward_sweep` (for the spilled flows and refill features). The backward states are
        recomputed from ``backward_checkpoint`` unless j == 0 and the sweep of this object kept them.
        ``reconstruct=False`` runs the recurrences only (to compute forward checkpoints).
        """
        if j not in self._prepared:
            raise RuntimeError(f"LongVideo.segment: run backward_sweep() or prepare_segment({j}) first")
        start, end = self.segments[j]
        if j == 0 and self._first_states is not None:
            states, self._first_states = self._first_states, None
        else:
            if (backward_checkpoint is None) != (j == len(self.segments) - 1):
                raise ValueError(
                    f"LongVideo.segment: segment {j} of {len(self.segments)}: the backward "
                    f"checkpoint is None for the last segment only"
                )
            feat = self._zero_state() if backward_checkpoint is None else backward_checkpoint
            states = self._backward_segment(j, feat, compute=False)
        if (forward_checkpoint is None) != (j == 0):
            raise ValueError(
                f"LongVideo.segment: segment {j}: the forward checkpoint is None for the first segment only"
            )
        flows = self._forward_flows(start, end)
        # the model's torch.zeros_like(feat_prop), feat_prop being the backward state of frame 0
        feat = torch.zeros_like(states[0]) if forward_checkpoint is None else forward_checkpoint
        h, w = self.size
        for i in range(start, end):
            lr = self._input(i)
            flow = next(flows) if i > 0 else None
            backward_state, states[i - start] = states[i - start], None
            if self.kind == "iconvsr":
                feat = self.model.forward_step(lr, backward_state, feat, flow, self._refill_feature(i, False))
                if reconstruct:
                    yield self.model.reconstruct(feat, lr)[0, :, : 4 * h, : 4 * w]
            else:
                feat = self.model.forward_step(lr, feat, flow)
                if reconstruct:
                    yield self.model.fuse_and_reconstruct(backward_state, feat, lr)[0]
        return feat

    def frames(self):
        """All HR frames in order: the backward sweep, then the segments one after the other."""
        self.backward_sweep()
        feat = None
        for j in range(len(self.segments)):
            if j > 0:
                self.set_forward_checkpoint(j, feat)
            feat = yield from self.segment(j, self.backward_checkpoint(j), feat)

    def close(self):
        for spill in (self._flows, self._refill, *self._checkpoints.values()):
            if spill is not None:
                spill.close()
        self._first_states = None


def _check_clip(model, t, h, w):
    if t < 1:
        raise ValueError("vsr_fast.upscale: no frames")
    if isinstance(model, IconVSR):
        if t < model.min_frames:
            raise ValueError(
                f"IconVSR: padding={model.padding} needs at least {model.min_frames} frames (the "
                f"information-refill window is {model.min_frames} frames), got {t}"
            )
        if min(h, w) < 3:
            raise ValueError(
                f"IconVSR: frames of {h}x{w} are too small: reflect-padding them to a "
                f"multiple of 4 needs at least 3 pixels in each direction"
            )


def _open_source(frames, spill_dir, progress):
    """Random access to the frames: the tensor or sequence itself, else the iterable spilled."""
    if torch.is_tensor(frames):
        if frames.dim() != 4 or frames.size(1) != 3:
            raise ValueError(f"vsr_fast.upscale: expected frames (T, 3, H, W), got {list(frames.shape)}")
        if len(frames):
            _as_frame(frames[0], 0)
        return _TensorFrames(frames)
    if isinstance(frames, (str, bytes, os.PathLike)):
        raise TypeError("vsr_fast.upscale: frames is a path; read the video with vsr_fast.io.read_video")
    if isinstance(frames, Sequence):
        frames = [_as_frame(f, i) for i, f in enumerate(frames)]
        if len({(tuple(f.shape), f.dtype) for f in frames}) > 1:
            raise ValueError("vsr_fast.upscale: the frames differ in size or dtype")
        return _TensorFrames(frames)
    return _SpilledFrames(frames, spill_dir, progress)


def _tile_boxes(h, w, tile, overlap):
    """[((y, x, th, tw), (y0, y1, x0, x1))]: each tile and the LR region it owns, which reaches to the
    middle of its overlap with each neighbour."""

    def axis(size):
        length = min(tile, size)
        starts = list(range(0, size - length, tile - overlap)) + [size - length]
        owned = []
        for k, s in enumerate(starts):
            lo = 0 if k == 0 else (starts[k - 1] + length + s) // 2
            hi = size if k == len(starts) - 1 else (s + length + starts[k + 1]) // 2
            owned.append((s, length, lo, hi))
        return owned

    return [((y, x, th, tw), (y0, y1, x0, x1)) for y, th, y0, y1 in axis(h) for x, tw, x0, x1 in axis(w)]


@torch.no_grad()
def _chunked(model, source, chunk, overlap):
    dtype, device = _model_dtype_device(model)
    t = len(source)
    min_frames = getattr(model, "min_frames", 1)
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        lo, hi = max(0, start - overlap), min(t, end + overlap)
        if hi - lo < min_frames:  # IconVSR: widen the context to its refill window
            lo = max(0, hi - min_frames)
            hi = min(t, lo + min_frames)
        clip = torch.stack([_to_model_input(source[i], dtype, device) for i in range(lo, hi)])
        yield from model(clip[None])[0, start - lo : end - lo]


def _segment_length(model, source, segment_length, max_memory):
    if segment_length is not None:
        return segment_length
    h, w = source[0].shape[1:]
    try:
        return segment_length_for(
            model, len(source), int(h), int(w), DEFAULT_MAX_MEMORY if max_memory is None else max_memory
        )
    except ValueError:
        if max_memory is not None:
            raise
        return 1  # frames too large for the default budget: the least memory there is


def _exact(model, source, segment_length, max_memory, flow_batch, spill_dir, progress):
    segment_length = _segment_length(model, source, segment_length, max_memory)
    engine = LongVideo(
        model, source, segment_length, flow_batch=flow_batch, spill_dir=spill_dir, progress=progress
    )
    try:
        yield from engine.frames()
    finally:
        engine.close()


def _tiled(source, tile, tile_overlap, inner, progress):
    t = len(source)
    h, w = (int(s) for s in source[0].shape[1:])
    boxes = _tile_boxes(h, w, tile, tile_overlap)

    def tile_progress(k):
        # each tile's backward sweep runs when its first frame is asked for: one bar over all tiles
        if progress is None:
            return None
        return lambda phase, done, total: (
            progress(phase, k * total + done, len(boxes) * total) if phase == "backward" else None
        )

    gens = [
        inner(_CroppedFrames(source, *box), len(boxes), tile_progress(k)) for k, (box, _) in enumerate(boxes)
    ]
    try:
        for _ in range(t):
            out = None
            for gen, ((y, x, _, _), (y0, y1, x0, x1)) in zip(gens, boxes):
                piece = next(gen)
                if out is None:
                    out = piece.new_empty(3, 4 * h, 4 * w)
                out[:, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1] = piece[
                    :, 4 * (y0 - y) : 4 * (y1 - y), 4 * (x0 - x) : 4 * (x1 - x)
                ]
            yield out
    finally:
        for gen in gens:
            gen.close()


def upscale(
    model,
    frames,
    *,
    segment_length=None,
    max_memory=None,
    chunk=None,
    overlap=0,
    tile=None,
    tile_overlap=0,
    flow_batch=4,
    spill_dir=None,
    progress=None,
):
    """Upscale a clip x4 with a BasicVSR / IconVSR: a generator of HR frames (3, 4H, 4W), in order.

    ``model``: `vsr_fast.BasicVSR` / `IconVSR` or the `vsr_fast.reference` ones, on any device and in
    any dtype; frames are moved to its device and converted to its dtype (uint8 frames as ``x / 255``
    in fp32 first). ``frames``: a (T, 3, H, W) tensor in [0, 1] (or uint8), a sequence of (3, H, W)
    frames, or any iterable of them (read once and spilled to a temporary file in ``spill_dir``).

    Exact by default: the frames equal ``model(frames[None])[0]`` (module doc: how, and to what
    precision), holding K backward states plus a few whatever T. K is ``segment_length``, or the
    largest that keeps the feature memory within ``max_memory`` bytes (`segment_length_for`), by
    default within `DEFAULT_MAX_MEMORY`.

    Approximate modes, whose output differs from the model's: ``chunk=N`` runs the model on chunks of
    N frames with ``overlap`` frames of context on each side (the full model's memory for N +
    2 * overlap frames); ``tile=S`` upscales overlapping S x S LR tiles (``tile_overlap`` pixels) side
    by side, each exactly or in chunks, and stitches them; the tiles' feature memory adds up to about
    the whole frame's (``max_memory`` is shared among them), each step's activations shrink.

    ``progress(phase, done, total)`` is called as phase "read" (an iterable being spilled; total
    None), "backward" (the exact engine's backward sweep), "recompute" (a segment's backward states
    being recomputed before its frames; per segment) and "upscale" (frames emitted) progress.
    """
    _model_kind(model)
    for name, value, least in (
        ("segment_length", segment_length, 1),
        ("max_memory", max_memory, 1),
        ("chunk", chunk, 1),
        ("tile", tile, 1),
        ("flow_batch", flow_batch, 1),
        ("overlap", overlap, 0),
        ("tile_overlap", tile_overlap, 0),
    ):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise ValueError(f"vsr_fast.upscale: {name} must be an integer >= {least}, got {value!r}")
    if segment_length is not None and max_memory is not None:
        raise ValueError("vsr_fast.upscale: give segment_length or max_memory, not both")
    if chunk is not None and (segment_length is not None or max_memory is not None):
        raise ValueError(
            "vsr_fast.upscale: chunk mode runs the full model on each chunk; segment_length "
            "and max_memory belong to the exact engine"
        )
    if chunk is None and overlap:
        raise ValueError("vsr_fast.upscale: overlap needs chunk")
    if tile is None and tile_overlap:
        raise ValueError("vsr_fast.upscale: tile_overlap needs tile")
    if tile is not None and tile_overlap >= tile:
        raise ValueError(f"vsr_fast.upscale: tile_overlap ({tile_overlap}) must be below tile ({tile})")
    source = None
    if torch.is_tensor(frames) or (isinstance(frames, Sequence) and not isinstance(frames, (str, bytes))):
        # in memory already: check now, not at the first frame
        source = _open_source(frames, spill_dir, progress)
        if len(source) == 0:
            raise ValueError("vsr_fast.upscale: no frames")
        _check_clip(model, len(source), *(int(s) for s in source[0].shape[1:]))
    elif isinstance(frames, (str, bytes, os.PathLike)):
        _open_source(frames, spill_dir, progress)  # raises
    return _generate(
        model,
        source if source is not None else frames,
        segment_length,
        max_memory,
        chunk,
        overlap,
        tile,
        tile_overlap,
        flow_batch,
        spill_dir,
        progress,
    )


def _generate(
    model,
    frames,
    segment_length,
    max_memory,
    chunk,
    overlap,
    tile,
    tile_overlap,
    flow_batch,
    spill_dir,
    progress,
):
    source = frames if isinstance(frames, _TensorFrames) else _open_source(frames, spill_dir, progress)
    try:
        if len(source) == 0:
            raise ValueError("vsr_fast.upscale: no frames")
        t = len(source)
        h, w = (int(s) for s in source[0].shape[1:])
        _check_clip(model, t, h, w)
        model._warn_if_small(h, w)  # the model's own warning for frames below 64x64

        def inner(src, parts=1, inner_progress=progress):
            if chunk is not None:
                return _chunked(model, src, chunk, overlap)
            budget = None if max_memory is None else max(1, max_memory // parts)
            return _exact(model, src, segment_length, budget, flow_batch, spill_dir, inner_progress)

        if tile is not None:
            if isinstance(model, IconVSR) and min(tile, h, w) < 3:
                raise ValueError(
                    f"IconVSR: tiles of {min(tile, h)}x{min(tile, w)} are too small (at least 3x3)"
                )
            gen = _tiled(source, tile, tile_overlap, inner, progress)
        else:
            gen = inner(source)
        try:
            for done, frame in enumerate(gen, 1):
                if progress is not None:
                    progress("upscale", done, t)
                yield frame
        finally:
            gen.close()
    finally:
        source.close()
