"""Video and image-folder input / output on PyAV, streaming: frames are decoded and encoded one at a
time, never all held in memory.

Frames are RGB uint8 tensors (3, H, W). Colour conversion:

* decoding honours the matrix (BT.709, BT.601, SMPTE 240M, FCC, BT.2020 non-constant) and range
  (limited / full) tagged on each frame; an untagged matrix is taken as BT.709 for frames at least
  720 lines high and BT.601 below (what players assume), an untagged range as limited (full for the
  ``yuvj*`` formats). RGB sources (PNG, RGB codecs) involve no matrix.
* encoding uses BT.709, limited range, and tags the stream with it (matrix, primaries, transfer,
  range) so that players decode it as it was encoded; ``yuv420p`` by default, so H and W are even.

Timing: the output keeps the input's frame rate, time base (where the container allows: MP4 keeps
it) and each frame's timestamp (variable frame rate survives). Audio streams are copied packet by
packet (remuxed, not re-encoded), interleaved with the video by time.
"""

import os
import re
from array import array
from fractions import Fraction

import numpy as np
import torch

__all__ = [
    "VideoError",
    "VideoReader",
    "VideoWriter",
    "ImageFolderReader",
    "ImageFolderWriter",
    "open_input",
    "open_output",
    "is_image_folder",
    "IMAGE_EXTENSIONS",
    "read_video",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# AVColorSpace -> the swscale matrix PyAV names
_MATRICES = {1: "itu709", 4: "fcc", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_BT709, _LIMITED, _FULL = 1, 1, 2  # AVCOL_SPC/PRI/TRC_BT709, AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG
DEFAULT_IMAGE_FPS = Fraction(25)


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency
        raise VideoError("video input/output needs PyAV (pip install av)") from e
    return av


class VideoError(RuntimeError):
    """A video or image that cannot be read or written; the message says which and why."""


def input_matrix(frame):
    """(swscale matrix name, range name) to decode ``frame`` with (see the module doc)."""
    matrix = _MATRICES.get(int(frame.colorspace))
    if matrix is None:
        matrix = "itu709" if frame.height >= 720 else "itu601"
    color_range = int(frame.color_range)
    if color_range not in (_LIMITED, _FULL):
        color_range = _FULL if frame.format.name.startswith("yuvj") else _LIMITED
    return matrix, "JPEG" if color_range == _FULL else "MPEG"


def _to_tensor(frame):
    if frame.format.is_rgb:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        matrix, color_range = input_matrix(frame)
        rgb = frame.reformat(format="rgb24", src_colorspace=matrix, src_color_range=color_range).to_ndarray()
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()


class VideoReader:
    """The first video stream of a file, decoded frame by frame: iterate for (3, H, W) uint8 RGB.

    ``fps`` (a Fraction), ``time_base``, ``width``, ``height``, ``frame_count`` (from the container,
    None if it does not say), ``has_audio``; after iterating, ``pts`` holds each frame's timestamp
    in ``time_base`` units (8 bytes per frame).
    """

    def __init__(self, path):
        av = _av()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise VideoError(f"{self.path}: no such file")
        try:
            self._container = av.open(self.path)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{self.path}: cannot read it as a video ({e})") from e
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"{self.path}: has no video stream")
        stream = self._container.streams.video[0]
        self._stream = stream
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = Fraction(rate) if rate else DEFAULT_IMAGE_FPS
        self.time_base = Fraction(stream.time_base) if stream.time_base else 1 / self.fps
        self.frame_count = stream.frames or None
        self.has_audio = bool(self._container.streams.audio)
        self.pts = array("q")
        self._used = False

    def __iter__(self):
        if self._used:
            raise VideoError(f"{self.path}: a VideoReader is read once; open another")
        self._used = True
        av = _av()
        self._stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                pts = frame.pts
                if pts is None:  # no timestamps: the nominal rate
                    pts = round(index / (self.fps * self.time_base))
                self.pts.append(pts)
                index += 1
                yield _to_tensor(frame)
        except av.FFmpegError as e:
            raise VideoError(f"{self.path}: decoding failed at frame {index} ({e})") from e
        finally:
            self._container.close()
        if index == 0:
            raise VideoError(f"{self.path}: the video stream has no frames")

    def close(self):
        self._container.close()


def is_image_folder(path):
    """A directory, or a path spelled as one (trailing slash), or one without a file extension."""
    path = os.fspath(path)
    return os.path.isdir(path) or path.endswith(os.sep) or not os.path.splitext(path)[1]


def _natural_key(name):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


class ImageFolderReader:
    """The images of a folder in natural order (frame2 before frame10), as (3, H, W) uint8 RGB; all must
    have one size. ``fps`` is `DEFAULT_IMAGE_FPS` (a folder has no rate)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise VideoError(f"{self.path}: no such folder")
        names = sorted(
            (n for n in os.listdir(self.path) if n.lower().endswith(IMAGE_EXTENSIONS)), key=_natural_key
        )
        if not names:
            raise VideoError(f"{self.path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        self._files = [os.path.join(self.path, n) for n in names]
        first = self._read(self._files[0])
        self.height, self.width = first.shape[1:]
        self.fps, self.time_base = DEFAULT_IMAGE_FPS, 1 / DEFAULT_IMAGE_FPS
        self.frame_count = len(self._files)
        self.has_audio = False
        self.pts = array("q", range(len(self._files)))

    @staticmethod
    def _read(file):
        av = _av()
        try:
            with av.open(file) as container:
                for frame in container.decode(video=0):
                    return _to_tensor(frame)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{file}: cannot read the image ({e})") from e
        raise VideoError(f"{file}: the image has no picture")

    def __iter__(self):
        for file in self._files:
            frame = self._read(file)
            if tuple(frame.shape[1:]) != (self.height, self.width):
                raise VideoError(
                    f"{file}: is {frame.shape[2]}x{frame.shape[1]}, the folder's first image "
                    f"is {self.width}x{self.height}"
                )
            yield frame

    def close(self):
        pass


def open_input(path):
    """A `VideoReader` for a file, an `ImageFolderReader` for a directory."""
    return ImageFolderReader(path) if os.path.isdir(os.fspath(path)) else VideoReader(path)


def read_video(path):
    """All frames of a video or image folder as one (T, 3, H, W) uint8 tensor (short clips only)."""
    return torch.stack(list(open_input(path)))


def _supports_option(codec_context, name):
    return name in {o.name for o in codec_context.supported_options.private}


class VideoWriter:
    """Encodes (3, H, W) uint8 RGB frames to a video file.

    ``codec`` (default libx264) in ``pix_fmt`` (yuv420p) with ``crf`` (for codecs that have the
    option: libx264/5, VP9, AV1) and any other codec ``options``; BT.709 limited range, tagged.
    ``fps`` and ``time_base`` set the stream's timing; `write` takes each frame's ``pts`` in
    ``time_base`` units (default: frame index / fps). ``audio_from``: a file whose audio streams are
    copied into the output.
    """

    def __init__(
        self,
        path,
        width,
        height,
        *,
        fps,
        time_base=None,
        codec="libx264",
        crf=18,
        pix_fmt="yuv420p",
        options=None,
        audio_from=None,
    ):
        av = _av()
        self.path = os.fspath(path)
        self.fps = Fraction(fps)
        self.time_base = Fraction(time_base) if time_base else 1 / self.fps
        self._frames = 0
        try:
            self._container = av.open(self.path, mode="w")
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"{self.path}: cannot write it ({e})") from e
        try:
            if codec not in av.codecs_available:
                raise VideoError(f"{self.path}: this PyAV/FFmpeg has no {codec!r} encoder")
            stream = self._container.add_stream(codec, rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.time_base = self.time_base
            stream.codec_context.time_base = self.time_base
            cc = stream.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = _BT709, _BT709, _BT709, _LIMITED
            opts = dict(options or {})
            if crf is not None:
                if not _supports_option(cc, "crf"):
                    raise VideoError(
                        f"{self.path}: the {codec} encoder has no CRF setting; leave --crf out "
                        f"or pass its own options"
                    )
                opts.setdefault("crf", str(crf))
            stream.options = opts
            self._stream = stream
            self._audio = _AudioCopy(self._container, audio_from) if audio_from else None
            self._container.start_encoding()
        except av.FFmpegError as e:
            self._container.close()
            raise VideoError(
                f"{self.path}: cannot set up the {codec} encoder / {self._container.format.name} "
                f"container ({e})"
            ) from e
        except BaseException:
            self._container.close()
            raise

    def write(self, frame, pts=None):
        av = _av()
        rgb = frame.detach().to("cpu", torch.uint8).permute(1, 2, 0).contiguous().numpy()
        video_frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format=self._stream.pix_fmt, dst_colorspace="itu709", dst_color_range="MPEG"
        )
        video_frame.pts = round(self._frames / (self.fps * self.time_base)) if pts is None else int(pts)
        video_frame.time_base = self.time_base
        self._frames += 1
        if self._audio is not None:
            self._audio.copy_until(float(video_frame.pts * self.time_base))
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def close(self):
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            if self._audio is not None:
                self._audio.copy_until(float("inf"))
        finally:
            if self._audio is not None:
                self._audio.close()
            self._container.close()

    def abort(self):
        if self._audio is not None:
            self._audio.close()
        self._container.close()


class _AudioCopy:
    """The audio streams of ``source`` remuxed into ``container``, packet by packet, in time order."""

    def __init__(self, container, source):
        av = _av()
        self._input = av.open(os.fspath(source))
        streams = list(self._input.streams.audio)
        self._out = {s.index: container.add_stream_from_template(s) for s in streams}
        self._packets = self._input.demux(*streams) if streams else iter(())
        self._pending = None

    def copy_until(self, seconds):
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    return
                if self._pending.dts is None:  # the demuxer's end-of-stream marker
                    self._pending = None
                    continue
            packet = self._pending
            if packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                return
            packet.stream = self._out[packet.stream.index]
            self._pending = None
            packet.stream.container.mux(packet)

    def close(self):
        self._input.close()


class ImageFolderWriter:
    """Writes frames as frame_000001.png, ... into a folder (created; lossless 8-bit RGB)."""

    def __init__(self, path):
        av = _av()
        self.path = os.fspath(path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise VideoError(f"{self.path}: cannot create the folder ({e})") from e
        self._codec = None
        self._av = av
        self._frames = 0

    def write(self, frame, pts=None):
        rgb = frame.detach().to("cpu", torch.uint8).permute(1, 2, 0).contiguous().numpy()
        if self._codec is None:
            self._codec = self._av.CodecContext.create("png", "w")
            self._codec.width, self._codec.height = rgb.shape[1], rgb.shape[0]
            self._codec.pix_fmt = "rgb24"
        self._frames += 1
        packets = self._codec.encode(self._av.VideoFrame.from_ndarray(rgb, format="rgb24"))
        with open(os.path.join(self.path, f"frame_{self._frames:06d}.png"), "wb") as f:
            for packet in packets:
                f.write(bytes(packet))

    def close(self):
        pass

    def abort(self):
        pass


def open_output(
    path, width, height, *, like=None, codec="libx264", crf=18, options=None, audio=True, folder=None
):
    """An `ImageFolderWriter` for a folder (``folder``, default `is_image_folder`), else a `VideoWriter`
    with the rate and time base of ``like`` (a reader) and, if ``audio``, its audio streams."""
    if is_image_folder(path) if folder is None else folder:
        return ImageFolderWriter(path)
    fps = like.fps if like is not None else DEFAULT_IMAGE_FPS
    time_base = like.time_base if like is not None else None
    audio_from = like.path if (audio and like is not None and like.has_audio) else None
    return VideoWriter(
        path,
        width,
        height,
        fps=fps,
        time_base=time_base,
        codec=codec,
        crf=crf,
        options=options,
        audio_from=audio_from,
    )
