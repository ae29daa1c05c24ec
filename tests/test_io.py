"""vsr_fast.io: streaming decode / encode, colour matrices and ranges, timing, audio copy, image folders.

Clips are generated with PyAV directly (tests/_video_helpers.py) with a known matrix and range, so
the oracle for the colours is the patch RGB values, not vsr_fast.io itself.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from vsr_fast import io as vio  # noqa: E402

from _video_helpers import PATCH, PATCHES, moving_frames, patch_frame, probe, write_clip  # noqa: E402

# 8-bit YUV 4:2:0 with the right matrix and range loses at most a couple of code values on flat
# patches; the wrong matrix is off by far more (red: 17 in G, BT.709 vs BT.601), the wrong range by ~20
MAX_CODE_ERROR = 3


def _patch_centres(frame_rgb_chw, shift=0, rows=3):
    cols = -(-len(PATCHES) // rows)
    got = {}
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        y, x = r * PATCH + PATCH // 2, c * PATCH + PATCH // 2
        got[PATCHES[(k + shift) % len(PATCHES)][0]] = (
            frame_rgb_chw[:, y - 4 : y + 4, x - 4 : x + 4].float().mean((1, 2))
        )
    return got


def _assert_patches(frame, shift=0, tol=MAX_CODE_ERROR):
    for name, rgb in PATCHES:
        got = _patch_centres(frame, shift)[name]
        err = (got - torch.tensor(rgb, dtype=torch.float32)).abs().max().item()
        assert err <= tol, f"{name}: decoded {got.tolist()} for {rgb} (off by {err:.1f})"


def test_writer_encodes_bt709_limited_range_and_tags_it(tmp_path):
    path = tmp_path / "patches.mp4"
    frames = [torch.from_numpy(patch_frame(shift=i)).permute(2, 0, 1) for i in range(3)]
    writer = vio.VideoWriter(path, frames[0].shape[2], frames[0].shape[1], fps=25, crf=0)
    for f in frames:
        writer.write(f)
    writer.close()
    info = probe(path)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    # AVCOL_SPC_BT709 / AVCOL_PRI_BT709 / AVCOL_TRC_BT709 / AVCOL_RANGE_MPEG
    assert (info["colorspace"], info["color_primaries"], info["color_trc"], info["color_range"]) == (
        1,
        1,
        1,
        1,
    )
    # the luma plane itself: limited range (white 235, black 16) and the BT.709 weights (red 63, not
    # BT.601's 81)
    luma = info["first_luma"]
    cols = -(-len(PATCHES) // 3)
    expected = {"white": 235, "black": 16, "red": 63, "green": 173, "blue": 32}
    for k, (name, _) in enumerate(PATCHES):
        if name in expected:
            r, c = divmod(k, cols)
            value = luma[r * PATCH + PATCH // 2, c * PATCH + PATCH // 2]
            assert abs(int(value) - expected[name]) <= 1, (name, value)
    decoded = list(vio.VideoReader(path))
    assert len(decoded) == 3
    for i, frame in enumerate(decoded):
        assert frame.dtype == torch.uint8 and frame.shape == frames[0].shape
        _assert_patches(frame, shift=i)


@pytest.mark.parametrize(
    "matrix, color_range, pix_fmt",
    [
        ("itu601", "MPEG", "yuv420p"),
        ("itu601", "JPEG", "yuvj420p"),
        ("itu709", "JPEG", "yuv420p"),
        ("itu709", "MPEG", "yuv444p"),
    ],
)
def test_reader_honours_the_tagged_matrix_and_range(tmp_path, matrix, color_range, pix_fmt):
    path = tmp_path / "tagged.mp4"
    write_clip(path, np.stack([patch_frame()] * 2), matrix=matrix, color_range=color_range, pix_fmt=pix_fmt)
    for frame in vio.VideoReader(path):
        _assert_patches(frame)


@pytest.mark.parametrize("height, matrix", [(48, "itu601"), (720, "itu709")])
def test_untagged_video_is_bt601_below_720_lines_and_bt709_from_720(tmp_path, height, matrix):
    path = tmp_path / "untagged.mp4"
    img = np.zeros((height, 64, 3), np.uint8)
    img[:] = patch_frame()[: 1 * PATCH, : 4 * PATCH].repeat(-(-height // PATCH), 0)[:height]
    write_clip(path, np.stack([img]), matrix=matrix, tag=False)
    assert probe(path)["colorspace"] == 2  # unspecified
    frame = next(iter(vio.VideoReader(path)))
    for k, (name, rgb) in enumerate(PATCHES[:4]):
        got = frame[:, height // 2, k * PATCH + PATCH // 2].float()
        assert (got - torch.tensor(rgb, dtype=torch.float32)).abs().max() <= MAX_CODE_ERROR, (name, got)


def test_frame_rate_time_base_and_variable_timestamps_are_kept(tmp_path):
    src = tmp_path / "vfr.mp4"
    pts = [0, 1000, 1500, 4000, 4100, 6000]  # irregular, in 1/3000 s
    write_clip(src, moving_frames(6, 32, 48), fps=Fraction(30000, 1001), pts=pts, time_base=Fraction(1, 3000))
    src_info = probe(src)  # the muxer picks the file's time base: compare times in seconds
    assert [p * src_info["time_base"] for p in src_info["pts"]] == [Fraction(p, 3000) for p in pts]
    reader = vio.VideoReader(src)
    frames = list(reader)
    assert reader.time_base == src_info["time_base"] and list(reader.pts) == src_info["pts"]
    out = tmp_path / "out.mp4"
    writer = vio.open_output(out, 48, 32, like=reader)
    for frame, t in zip(frames, reader.pts):
        writer.write(frame, t)
    writer.close()
    out_info = probe(out)
    assert out_info["time_base"] == src_info["time_base"]
    assert out_info["pts"] == src_info["pts"]


def test_a_constant_ntsc_frame_rate_is_kept_exactly(tmp_path):
    src = tmp_path / "ntsc.mp4"
    write_clip(src, moving_frames(5, 16, 16), fps=Fraction(30000, 1001))
    reader = vio.VideoReader(src)
    assert reader.fps == Fraction(30000, 1001)
    out = tmp_path / "out.mp4"
    writer = vio.open_output(out, 16, 16, like=reader)
    for frame, t in zip(reader, reader.pts):
        writer.write(frame, t)
    writer.close()
    assert probe(out)["fps"] == Fraction(30000, 1001)
    assert probe(out)["pts"] == probe(src)["pts"]


def test_audio_streams_are_copied(tmp_path):
    src = tmp_path / "with_audio.mp4"
    write_clip(src, moving_frames(12, 32, 48), fps=12, audio_seconds=1.0)
    reader = vio.VideoReader(src)
    assert reader.has_audio
    out = tmp_path / "out.mp4"
    writer = vio.open_output(out, 48, 32, like=reader)
    for frame, t in zip(reader, reader.pts):
        writer.write(frame, t)
    writer.close()
    src_info, out_info = probe(src), probe(out)
    assert out_info["audio"] == src_info["audio"] == ["aac"]
    assert out_info["audio_packets"] == src_info["audio_packets"] > 10
    no_audio = tmp_path / "silent.mp4"
    reader = vio.VideoReader(src)
    writer = vio.open_output(no_audio, 48, 32, like=reader, audio=False)
    for frame in reader:
        writer.write(frame)
    writer.close()
    assert probe(no_audio)["audio"] == []


def test_reading_is_streaming(tmp_path):
    """The reader is a generator over the decoder: the first frame comes before the last is decoded."""
    path = tmp_path / "clip.mp4"
    write_clip(path, moving_frames(8, 32, 48))
    reader = vio.VideoReader(path)
    it = iter(reader)
    next(it)
    assert len(reader.pts) == 1
    rest = list(it)
    assert len(rest) == 7 and len(reader.pts) == 8


def test_image_folders_round_trip_losslessly_in_natural_order(tmp_path):
    frames = torch.from_numpy(moving_frames(11, 20, 28)).permute(0, 3, 1, 2)
    folder = tmp_path / "frames"
    writer = vio.open_output(folder, 28, 20)
    assert isinstance(writer, vio.ImageFolderWriter)
    for f in frames:
        writer.write(f)
    writer.close()
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "frame_000001.png" and len(names) == 11
    # natural order: rename two so that plain string order would be wrong
    (folder / "frame_000002.png").rename(folder / "img2.png")
    (folder / "frame_000010.png").rename(folder / "img10.png")
    reader = vio.open_input(folder)
    assert isinstance(reader, vio.ImageFolderReader) and reader.frame_count == 11
    back = list(reader)
    assert torch.equal(torch.stack(back[:9]), frames[[0, 2, 3, 4, 5, 6, 7, 8, 10]])
    assert torch.equal(back[9], frames[1]) and torch.equal(back[10], frames[9])


def test_image_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(vio.VideoError, match="no images"):
        vio.open_input(empty)
    mixed = tmp_path / "mixed"
    writer = vio.ImageFolderWriter(mixed)
    writer.write(torch.zeros(3, 8, 8, dtype=torch.uint8))
    vio.ImageFolderWriter(tmp_path / "other").write(torch.zeros(3, 8, 10, dtype=torch.uint8))
    (tmp_path / "other" / "frame_000001.png").rename(mixed / "frame_000002.png")
    with pytest.raises(vio.VideoError, match="10x8"):
        list(vio.open_input(mixed))


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(vio.VideoError, match="no such file"):
        vio.VideoReader(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(vio.VideoError, match="cannot read"):
        vio.VideoReader(text)
    audio_only = tmp_path / "audio.m4a"
    write_clip(tmp_path / "a.mp4", moving_frames(2, 16, 16), audio_seconds=0.2)
    import av

    with av.open(str(tmp_path / "a.mp4")) as src, av.open(str(audio_only), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    with pytest.raises(vio.VideoError, match="no video stream"):
        vio.VideoReader(audio_only)


def test_write_errors_are_clear(tmp_path):
    with pytest.raises(vio.VideoError, match="cannot write"):
        vio.VideoWriter(tmp_path / "clip.unknownext", 16, 16, fps=25)
    with pytest.raises(vio.VideoError, match="no CRF"):
        vio.VideoWriter(tmp_path / "clip.avi", 16, 16, fps=25, codec="mpeg4", crf=18)
    with pytest.raises(vio.VideoError, match="no 'nonexistent' encoder"):
        vio.VideoWriter(tmp_path / "clip.mp4", 16, 16, fps=25, codec="nonexistent")
    # without --crf the codec's own options work
    writer = vio.VideoWriter(
        tmp_path / "ok.avi", 16, 16, fps=25, codec="mpeg4", crf=None, options={"qscale": "2"}
    )
    writer.write(torch.zeros(3, 16, 16, dtype=torch.uint8))
    writer.close()
    assert probe(tmp_path / "ok.avi")["frames"] == 1
