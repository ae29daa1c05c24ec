"""Several processes (vsr_fast.distributed, `vsr-fast upscale` under torchrun): 2 CPU ranks on gloo,
launched by the tests with torchrun (``python -m torch.distributed.run``) on a free port.

Oracles: the single-process CLI and engine, run here on one thread as each rank runs (torchrun sets
OMP_NUM_THREADS=1), so that SPyNet's batches give the same flows and the frames must be equal bit for
bit (tests/test_inference.py: why the thread count matters).
"""

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytest.importorskip("av")

import vsr_fast  # noqa: E402
from vsr_fast import cli, distributed  # noqa: E402
from vsr_fast import io as vio  # noqa: E402
from vsr_fast.checkpoint import convert_state_dict  # noqa: E402

from _video_helpers import moving_frames, probe, write_clip  # noqa: E402

RUN_TIMEOUT = 240  # seconds: a hang fails the test instead of blocking the suite


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    torch.manual_seed(0)
    basic = vsr_fast.BasicVSR(mid_channels=8, num_blocks=1)
    torch.save({"params": convert_state_dict(basic.state_dict(), "basicsr")}, root / "basicvsr_small.pth")
    icon = vsr_fast.IconVSR(mid_channels=8, num_blocks=1, padding=2)
    torch.save(icon.state_dict(), root / "iconvsr_small.pth")
    clips = root / "clips"
    clips.mkdir()
    for name, t, seed in (("a.mp4", 7, 1), ("b.mp4", 4, 2), ("c.mkv", 5, 3)):
        write_clip(clips / name, moving_frames(t, 32, 48, seed=seed))
    (clips / "broken.mp4").write_bytes(b"not a video at all")
    write_clip(root / "ten.mp4", moving_frames(10, 32, 48, seed=4))
    return root


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env():
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun_args(*args, nproc=2):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "vsr_fast",
        *map(str, args),
    ]


def torchrun(*args, cwd, nproc=2):
    return subprocess.run(
        torchrun_args(*args, nproc=nproc),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=launch_env(),
        timeout=RUN_TIMEOUT,
    )


def engine_frames(model, path, segment_length):
    """What the single-process CLI writes: the engine's frames quantised to uint8, on one thread."""
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # frames below 64x64: the point is equality
        return [
            (hr.clamp(0, 1) * 255).round().to(torch.uint8)
            for hr in vsr_fast.upscale(model, vio.VideoReader(path), segment_length=segment_length)
        ]


# ---- the launch environment ---------------------------------------------------------------------------


def test_without_torchrun_it_is_one_process():
    assert distributed.launch_environment({}) is None
    world = distributed.init("cpu", launch=None) if not os.environ.get("RANK") else None
    if world is not None:
        assert (world.rank, world.world_size, world.store) == (0, 1, None)
        assert list(world.share_out(["x", "y", "z"], [1, 3, 2])) == [(1, "y"), (2, "z"), (0, "x")]
        assert world.all_gather("me") == ["me"]


@pytest.mark.parametrize(
    "env, match",
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, "half set: RANK, WORLD_SIZE set but LOCAL_RANK, MASTER_ADDR"),
        ({"MASTER_ADDR": "127.0.0.1"}, "half set.*RANK, WORLD_SIZE, LOCAL_RANK, MASTER_PORT not"),
        (
            {"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "29500"},
            "RANK=2 WORLD_SIZE=2",
        ),
        (
            {"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "29500"},
            "RANK='x' is not an integer",
        ),
    ],
)
def test_a_half_set_launch_environment_is_a_clear_error(env, match):
    with pytest.raises(distributed.LaunchError, match=match):
        distributed.launch_environment(env)


def test_the_cli_says_so_in_one_line(assets, tmp_path, monkeypatch, capsys):
    for name in distributed.LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = cli.main(["upscale", str(assets / "ten.mp4"), str(tmp_path / "o.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("vsr-fast: error:")]
    assert len(errors) == 1 and "half set" in errors[0] and "torchrun" in errors[0], err
    assert list(tmp_path.iterdir()) == []


def test_one_gpu_per_rank():
    launch = distributed.Launch(rank=1, world_size=2, local_rank=1)
    assert distributed.rank_device("cpu", launch) == torch.device("cpu")
    with pytest.raises(distributed.LaunchError, match="each of the 2 ranks uses its own"):
        distributed.rank_device("cuda:0", launch)
    if torch.cuda.device_count() < 2:
        with pytest.raises(distributed.LaunchError, match="LOCAL_RANK=1 but this machine has"):
            distributed.rank_device("cuda", launch)


def test_split_in_one_process_is_the_engine():
    torch.manual_seed(0)
    model = vsr_fast.BasicVSR(mid_channels=8, num_blocks=1).eval()
    frames = torch.rand(7, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    world = distributed.World()
    with pytest.warns(UserWarning, match="64x64"):
        got = list(distributed.upscale_split(world, model, frames, segment_length=3))
        expected = list(vsr_fast.upscale(model, frames, segment_length=3))
    assert len(got) == 7 and all(torch.equal(g, e) for g, e in zip(got, expected))


@pytest.mark.parametrize("mirrored", [False, True])
def test_segments_from_an_engine_that_did_not_sweep(mirrored):
    """What a rank other than 0 does, in one process: flows and refill features from
    prepare_segment, BasicVSR's forward checkpoints from forward_sweep, the backward ones from
    another engine's sweep; its segments are the sweeping engine's. A mirrored clip too: there the
    sweeping engine reads its forward flows back from the backward ones, the other computes them."""
    from vsr_fast.inference import LongVideo

    torch.manual_seed(0)
    for model in (
        vsr_fast.BasicVSR(mid_channels=8, num_blocks=1).eval(),
        vsr_fast.IconVSR(mid_channels=8, num_blocks=1, padding=2, keyframe_stride=3).eval(),
    ):
        frames = torch.rand(8 if mirrored else 9, 3, 16, 20, generator=torch.Generator().manual_seed(2))
        if mirrored:
            frames = torch.cat([frames[:4], frames[:4].flip(0)])
        with one_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            swept, other = LongVideo(model, frames, 3), LongVideo(model, frames, 3)
            expected = list(swept.frames())
            assert swept._is_mirrored() is mirrored
            count = len(swept.segments)
            for j in range(count - 1):
                other.set_backward_checkpoint(j, swept.backward_checkpoint(j))
            if isinstance(model, vsr_fast.IconVSR):
                with pytest.raises(RuntimeError, match="needs the backward states"):
                    other.forward_sweep()
                for j in range(1, count):
                    other.set_forward_checkpoint(j, swept.forward_checkpoint(j))
            else:
                other.forward_sweep()
            got = []
            for j in reversed(range(count)):  # any order
                other.prepare_segment(j)
                got[:0] = list(other.segment(j, other.backward_checkpoint(j), other.forward_checkpoint(j)))
        assert len(got) == len(expected) and all(torch.equal(g, e) for g, e in zip(got, expected))
        swept.close()
        other.close()


# ---- many videos ----------------------------------------------------------------------------------------


def test_a_folder_of_clips_gives_the_same_files_over_two_ranks(assets, tmp_path, capsys):
    args = ["upscale", assets / "clips", "--weights", assets / "basicvsr_small.pth", "--segment-length", "3"]
    single = tmp_path / "single"
    single.mkdir()
    with one_thread():
        code = cli.main([str(a) for a in [*args, "--out-dir", single]])
    err = capsys.readouterr().err
    assert code == 1, err  # broken.mp4 failed, the others were written
    assert "broken.mp4" in err and "3 done, 1 failed" in err

    ranks = tmp_path / "ranks"
    ranks.mkdir()
    result = torchrun(*args, "--out-dir", ranks, cwd=tmp_path)
    assert result.returncode != 0, result.stderr
    err = result.stderr
    assert "4 inputs, 3 done, 1 failed" in err and "over 2 ranks" in err, err
    assert err.count("over 2 ranks") == 1, err  # one summary, from rank 0
    assert "broken.mp4: FAILED" in err and "(rank 0)" in err and "(rank 1)" in err, err  # both worked

    names = sorted(p.name for p in single.iterdir())
    assert names == ["a.mp4", "b.mp4", "c.mkv"]
    assert sorted(p.name for p in ranks.iterdir()) == names  # nothing else, no temporaries
    for name in names:
        if name.endswith(".mp4"):  # MP4 output is deterministic; Matroska writes a random segment UID
            assert (ranks / name).read_bytes() == (single / name).read_bytes(), name
        assert torch.equal(vio.read_video(ranks / name), vio.read_video(single / name)), name


# ---- one clip over the ranks ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["basicvsr", "iconvsr"])
def test_one_clip_over_two_ranks_is_the_single_process_engine(assets, tmp_path, kind):
    out = tmp_path / "frames"
    clip = assets / "ten.mp4"
    result = torchrun(
        "upscale",
        clip,
        str(out) + os.sep,
        "--model",
        kind,
        "--weights",
        assets / f"{kind}_small.pth",
        "--segment-length",
        "3",  # segments 0, 2 on rank 0 and 1, 3 on rank 1
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "segments over 2 ranks" in result.stderr and result.stderr.count("10 frames in") == 1
    model = cli.build_model(kind, assets / f"{kind}_small.pth")
    expected = engine_frames(model, clip, 3)
    got = list(vio.ImageFolderReader(out))
    assert len(got) == len(expected) == 10
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


# ---- a rank killed mid-run ---------------------------------------------------------------------------


def _children(pid):
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


@pytest.mark.parametrize("mode", ["queue", "split"])
def test_a_rank_killed_mid_run_leaves_no_half_output_file(assets, tmp_path, mode):
    """SIGKILL one rank while both work: torchrun stops the other, which removes its temporary output.
    Nothing is ever under an output's own name until it is complete; the killed rank cannot clean up,
    so its own hidden temporary (``.NAME.partial-PID``) may stay."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if mode == "queue":
        clips = tmp_path / "clips"
        clips.mkdir()
        for k in range(3):
            write_clip(clips / f"long{k}.mp4", moving_frames(60, 32, 48, seed=k))
        args = ["upscale", clips, "--out-dir", out_dir, "--segment-length", "4"]
    else:
        write_clip(tmp_path / "long.mp4", moving_frames(60, 32, 48))
        args = ["upscale", tmp_path / "long.mp4", out_dir / "up.mp4", "--segment-length", "4"]
    proc = subprocess.Popen(
        torchrun_args(*args, "--weights", assets / "basicvsr_small.pth", "--quiet"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=launch_env(),
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        writers = set()
        while len(writers) < (2 if mode == "queue" else 1):  # work under way: temporary outputs open
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the temporary outputs never appeared"
            time.sleep(0.05)
            writers = {int(p.name.rsplit("-", 1)[1].split(".")[0]) for p in out_dir.glob(".*.partial-*")}
        ranks = _children(proc.pid)
        assert writers <= ranks and len(ranks) == 2, (writers, ranks)
        victim = max(writers) if mode == "queue" else (ranks - writers).pop()  # split: not the writer
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, err
    left = sorted(p.name for p in out_dir.iterdir())
    for name in left:
        if name.startswith("."):
            assert f".partial-{victim}" in name, (left, err)  # only the killed rank's own temporary
        else:
            assert probe(out_dir / name)["frames"] == 60, name  # finished before the kill: complete
    if mode == "split":
        assert left == [], (left, err)  # the writer (rank 0) survived the kill and cleaned up
