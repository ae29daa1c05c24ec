"""Several processes over ``torch.distributed``: ranks launched by ``torchrun`` (one machine or
several), one device per rank, CPU ranks on gloo and CUDA ranks on NCCL.

* `init` reads the launch environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT): none of it means one process (``world_size`` 1, no process group); part of it is an
  error that says what is missing.
* `World.share_out` hands out work items dynamically, largest first: every rank sorts the same list
  and takes the next index from an atomic counter in the c10d store (``store.add``), so a rank that
  finishes early takes more and no rank waits for a fixed share.
* `upscale_split` runs one clip's exact engine (`vsr_fast.inference.LongVideo`) over the ranks:

  1. Checkpoints. Rank 0 runs the backward sweep. BasicVSR's forward branch does not read the backward
     features, so rank 1 runs the forward sweep (`LongVideo.forward_sweep`) at the same time. IconVSR's
     forward steps read the backward features, so its forward checkpoints need each segment's backward
     states recomputed, in order: rank 0 does that after its sweep (two trunk steps per frame on one
     rank; only what follows is shared). Meanwhile every other rank computes the flows and refill
     features of its own segments (`LongVideo.prepare_segment`), which depend on the frames only.
  2. The checkpoints go from the rank that computed them to the segment's owner (segment j belongs to
     rank j mod world_size), one tensor at a time, and are spilled there like the engine's own.
  3. Segments, each rank its own in order. Rank 0 emits the frames in order: its own as they are
     computed, the others' received from their owner once that owner has the whole segment (held in
     memory, converted, e.g. to uint8: at most one segment's frames per rank, a fraction of the
     segment's backward states the engine holds anyway).

  Every step is the engine's, on the same SPyNet batches, so the frames are the single-process
  engine's wherever SPyNet returns the same flows for the same batch (it does on one thread per
  process, which torchrun sets; module doc of `vsr_fast.inference`).

Waiting for another rank goes through the store (polled, with a ``poll`` hook between polls, so that
a signal is acted on), and a send or receive starts only once both sides are there, so the process
group's timeout bounds a transfer, not a rank's computation.
"""

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .inference import LongVideo, _open_source, _segment_length, _Spill

__all__ = ["LAUNCH_VARIABLES", "LaunchError", "World", "init", "launch_environment", "upscale_split"]

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# a transfer between two ranks that are both ready; waiting for a rank's work is not bounded by it
TRANSFER_TIMEOUT = timedelta(minutes=10)
_POLL_SECONDS = 0.05


class LaunchError(RuntimeError):
    """The torch.distributed launch environment is incomplete or inconsistent."""


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int


def launch_environment(environ=None):
    """The `Launch` torchrun describes in the environment, or None when nothing of it is set."""
    environ = os.environ if environ is None else environ
    present = [v for v in LAUNCH_VARIABLES if environ.get(v)]
    if not present:
        return None
    missing = [v for v in LAUNCH_VARIABLES if not environ.get(v)]
    if missing:
        raise LaunchError(
            f"vsr_fast.distributed: the launch environment is half set: {', '.join(present)} set but "
            f"{', '.join(missing)} not; launch with torchrun (which sets all of "
            f"{', '.join(LAUNCH_VARIABLES)}) or unset them to run as one process"
        )
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        try:
            values[name] = int(environ[name])
        except ValueError:
            raise LaunchError(f"vsr_fast.distributed: {name}={environ[name]!r} is not an integer") from None
    rank, world_size, local_rank, port = values.values()
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0 or not 0 < port < 2**16:
        raise LaunchError(
            f"vsr_fast.distributed: inconsistent launch environment: RANK={rank} WORLD_SIZE={world_size} "
            f"LOCAL_RANK={local_rank} MASTER_PORT={port} (need 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0, "
            f"0 < MASTER_PORT < 65536)"
        )
    return Launch(rank, world_size, local_rank)


def rank_device(device, launch):
    """The device of this rank: ``cuda`` means cuda:LOCAL_RANK under torchrun (one GPU per rank)."""
    device = torch.device(device)
    if launch is None or device.type != "cuda":
        return device
    if device.index is not None and launch.world_size > 1:
        raise LaunchError(
            f"vsr_fast.distributed: --device {device} names one GPU, but each of the {launch.world_size} "
            f"ranks uses its own (cuda:LOCAL_RANK); pass --device cuda"
        )
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise LaunchError(
            f"vsr_fast.distributed: LOCAL_RANK={launch.local_rank} but this machine has {count} CUDA "
            f"device(s); start at most {count} processes per node (torchrun --nproc-per-node {count})"
        )
    return torch.device("cuda", launch.local_rank)


@dataclass
class World:
    """This process among the ranks. ``store`` is the run's c10d store (None for one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    store: object = None
    _local_counters: dict = None

    @property
    def is_main(self):
        return self.rank == 0

    def counter_add(self, key, amount):
        """Atomically add to a counter shared by the ranks; returns the new value (0 adds nothing)."""
        if self.store is None:
            counters = self._local_counters if self._local_counters is not None else {}
            self._local_counters = counters
            counters[key] = counters.get(key, 0) + amount
            return counters[key]
        return self.store.add(key, amount)

    def share_out(self, items, sizes, key="queue"):
        """Yield (index, item) for this rank's share of ``items``, handed out largest ``sizes`` first;
        every rank must pass the same lists."""
        order = sorted(range(len(items)), key=lambda i: (-sizes[i], i))
        while True:
            k = self.counter_add(key, 1) - 1
            if k >= len(order):
                return
            yield order[k], items[order[k]]

    def wait_for(self, key, poll=None):
        """Wait until another rank has set ``key`` in the store, calling ``poll()`` in between."""
        while not self.store.check([key]):
            if poll is not None:
                poll()
            time.sleep(_POLL_SECONDS)

    def wait_until(self, condition, poll=None):
        while not condition():
            if poll is not None:
                poll()
            time.sleep(_POLL_SECONDS)

    def all_gather(self, obj):
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self.store is not None and dist.is_initialized():
            dist.destroy_process_group()


def init(device="cpu", launch=None, timeout=TRANSFER_TIMEOUT):
    """This process's `World` on ``device`` (the rank's own, `rank_device`): under torchrun the
    process group (gloo for CPU, NCCL for CUDA) and the store; otherwise one process."""
    launch = launch_environment() if launch is None else launch
    if launch is None:
        return World(device=torch.device(device))
    device = rank_device(device, launch)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    if (rank, world_size) != (launch.rank, launch.world_size):
        raise LaunchError(f"vsr_fast.distributed: the rendezvous gave rank {rank} of {world_size}")
    dist.init_process_group(
        backend,
        store=dist.PrefixStore("default_pg", store),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
        device_id=device if device.type == "cuda" else None,
    )
    return World(rank, world_size, launch.local_rank, device, dist.PrefixStore("vsr_fast", store))


# ---- tensors between ranks -------------------------------------------------------------------------

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.int64]
_HEADER = 7  # ndim (<= 4), shape padded to 4, dtype, channels_last


def _send(tensor, dst, device):
    """Send a tensor of up to 4 dims with its dtype and memory format (a channels_last state comes
    back channels_last, so the step that reads it runs the kernel it would have run here)."""
    shape, dtype, channels_last = _Spill._layout_of(tensor)
    payload = tensor.detach()
    payload = payload.permute(0, 2, 3, 1) if channels_last else payload
    payload = payload.contiguous().reshape(-1).view(torch.uint8).to(device)
    header = [len(shape), *shape, *[0] * (4 - len(shape)), _DTYPES.index(dtype), int(channels_last)]
    dist.send(torch.tensor(header, dtype=torch.int64, device=device), dst)
    dist.send(payload, dst)


def _recv(src, device):
    header = torch.empty(_HEADER, dtype=torch.int64, device=device)
    dist.recv(header, src)
    ndim, *rest = header.tolist()
    shape, dtype, channels_last = tuple(rest[:ndim]), _DTYPES[rest[4]], bool(rest[5])
    stored = (shape[0], shape[2], shape[3], shape[1]) if channels_last else shape
    nbytes = torch.empty((), dtype=dtype).element_size() * int(torch.Size(shape).numel())
    payload = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dist.recv(payload, src)
    tensor = payload.view(dtype).view(stored)
    return tensor.permute(0, 3, 1, 2) if channels_last else tensor


# ---- one clip over the ranks ----------------------------------------------------------------------


def _drain(generator):
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def upscale_split(
    world,
    model,
    frames,
    *,
    segment_length=None,
    max_memory=None,
    flow_batch=4,
    spill_dir=None,
    progress=None,
    convert=None,
    poll=None,
    key="split",
):
    """One clip's exact upscale over all ranks (module doc): a generator that yields, on rank 0, the
    HR frames in order, each passed through ``convert`` (default: as the engine gives them) on the
    rank that computed it; on the other ranks it yields nothing and returns when their share is
    sent. Every rank calls it with the same model, frames (each reads the clip itself) and options.

    ``progress`` (rank 0): as for `vsr_fast.upscale`, plus phase "forward" (forward checkpoints).
    ``poll()`` is called while waiting for another rank (e.g. to act on a signal).
    """
    convert = (lambda frame: frame) if convert is None else convert
    source = _open_source(frames, spill_dir, progress if world.is_main else None)
    engine = None
    try:
        if len(source) == 0:
            raise ValueError("vsr_fast.upscale: no frames")
        k = _segment_length(model, source, segment_length, max_memory)
        engine = LongVideo(
            model,
            source,
            k,
            flow_batch=flow_batch,
            spill_dir=spill_dir,
            progress=progress if world.is_main else None,
        )
        if world.world_size == 1 or len(engine.segments) == 1:
            if world.is_main:  # nothing to share: the engine as it is
                for done, frame in enumerate(engine.frames(), 1):
                    if progress is not None:
                        progress("upscale", done, engine.t)
                    yield convert(frame)
            return
        yield from _split(world, engine, convert, progress, poll, key)
    finally:
        if engine is not None:
            engine.close()
        source.close()


@torch.no_grad()
def _split(world, engine, convert, progress, poll, key):
    rank, size, device = world.rank, world.world_size, world.device
    count = len(engine.segments)
    owner = [j % size for j in range(count)]
    mine = [j for j in range(count) if owner[j] == rank]
    forward_rank = 1 if engine.kind == "basicvsr" else 0

    # 1. checkpoints, and each rank's flows and refill features
    if rank == 0:
        engine.backward_sweep()
        if forward_rank == 0:
            feat, engine.progress = None, None  # one "forward" bar, not one recompute bar per segment
            for j in range(count - 1):
                gen = engine.segment(j, engine.backward_checkpoint(j), feat, reconstruct=False)
                feat = _drain(gen)
                engine.set_forward_checkpoint(j + 1, feat)
                if progress is not None:
                    progress("forward", engine.segments[j][1], engine.t)
            engine.progress = progress
    elif rank == forward_rank:
        engine.forward_sweep()
    if rank != 0:
        for j in mine:
            engine.prepare_segment(j)

    # 2. checkpoints to the segments' owners: backward ones from rank 0, forward ones from forward_rank
    for kind, sender, segments in (
        ("backward", 0, range(count - 1)),
        ("forward", forward_rank, range(1, count)),
    ):
        ready = f"{key}/{kind}-checkpoints"
        if rank == sender:  # once every receiver is there: a send waits for its receive
            for other in range(size):
                if other != sender:
                    world.wait_for(f"{ready}/arrived/{other}", poll)
            world.store.set(ready, "1")
            read = engine.backward_checkpoint if kind == "backward" else engine.forward_checkpoint
            for j in segments:
                if owner[j] != sender:
                    _send(read(j), owner[j], device)
        else:
            world.store.set(f"{ready}/arrived/{rank}", "1")
            world.wait_for(ready, poll)
            store = engine.set_backward_checkpoint if kind == "backward" else engine.set_forward_checkpoint
            for j in segments:
                if owner[j] == rank:
                    store(j, _recv(sender, device))

    # 3. segments: rank 0 emits in order; the others compute theirs and send them when asked
    if rank == 0:
        done = 0
        for j, (start, end) in enumerate(engine.segments):
            if owner[j] == 0:
                frames = engine.segment(j, engine.backward_checkpoint(j), engine.forward_checkpoint(j))
                frames = (convert(frame) for frame in frames)
            else:
                world.store.set(f"{key}/want/{j}", "1")
                world.wait_for(f"{key}/ready/{j}", poll)
                frames = (_recv(owner[j], device) for _ in range(end - start))
            for frame in frames:
                done += 1
                if progress is not None:
                    progress("upscale", done, engine.t)
                yield frame
    else:
        for j in mine:
            gen = engine.segment(j, engine.backward_checkpoint(j), engine.forward_checkpoint(j))
            held = [convert(frame) for frame in gen]
            world.store.set(f"{key}/ready/{j}", "1")
            world.wait_for(f"{key}/want/{j}", poll)
            for frame in held:
                _send(frame, 0, device)
            del held
