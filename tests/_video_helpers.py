"""Generated test clips, written with PyAV directly (not through vsr_fast.io, which they test)."""

from fractions import Fraction

import numpy as np

# (name, RGB) patches: primaries, secondaries, greys and a skin tone
PATCHES = [
    ("red", (255, 0, 0)),
    ("green", (0, 255, 0)),
    ("blue", (0, 0, 255)),
    ("white", (255, 255, 255)),
    ("black", (0, 0, 0)),
    ("grey", (128, 128, 128)),
    ("yellow", (255, 255, 0)),
    ("cyan", (0, 255, 255)),
    ("magenta", (255, 0, 255)),
    ("skin", (224, 172, 140)),
    ("dark", (40, 60, 80)),
    ("orange", (250, 130, 20)),
]
PATCH = 16  # pixels; a multiple of 2 so that 4:2:0 chroma never straddles two patches


def patch_frame(shift=0, rows=3):
    """(H, W, 3) uint8: the patches in a grid of PATCH-sized squares, cycled by ``shift``."""
    cols = -(-len(PATCHES) // rows)
    img = np.zeros((rows * PATCH, cols * PATCH, 3), np.uint8)
    for k in range(rows * cols):
        _, rgb = PATCHES[(k + shift) % len(PATCHES)]
        r, c = divmod(k, cols)
        img[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = rgb
    return img


def moving_frames(t, h, w, seed=0):
    """(T, H, W, 3) uint8: a blocky random texture that moves one pixel per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, (w + t) // 4 + 1, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((4, 4, 1), np.uint8))
    return np.stack([big[:h, i : i + w] for i in range(t)])


def write_clip(
    path,
    frames,
    *,
    fps=24,
    codec="libx264",
    pix_fmt="yuv420p",
    matrix="itu709",
    color_range="MPEG",
    tag=True,
    pts=None,
    time_base=None,
    audio_seconds=None,
    options=None,
):
    """Encode RGB frames (T, H, W, 3) with an explicit matrix/range; ``tag`` writes them in the stream.
    ``pts``: per-frame timestamps in ``time_base`` (variable frame rate); ``audio_seconds``: a sine in AAC."""
    import av

    spaces = {"itu709": 1, "itu601": 6}
    ranges = {"MPEG": 1, "JPEG": 2}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if time_base is not None:
            stream.time_base = Fraction(time_base)
            stream.codec_context.time_base = Fraction(time_base)
        if tag:
            cc = stream.codec_context
            cc.colorspace = spaces[matrix]
            cc.color_range = ranges[color_range]
            cc.color_primaries = cc.color_trc = spaces[matrix]
        stream.options = dict(options or {"crf": "0"})
        audio = None
        if audio_seconds:
            audio = container.add_stream("aac", rate=16000)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace=matrix, dst_color_range=color_range)
            if not tag:
                frame.colorspace, frame.color_range = 2, 0  # unspecified
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = Fraction(time_base)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if audio is not None:
            n = int(16000 * audio_seconds)
            samples = (0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / 16000)).astype(np.float32)[None]
            chunk = 1024
            for start in range(0, n, chunk):
                piece = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, start : start + chunk]), format="fltp", layout="mono"
                )
                piece.sample_rate, piece.pts = 16000, start
                for packet in audio.encode(piece):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)


def probe(path):
    """What a player sees: streams, rate, time base, frame and audio-packet counts, colour tags, pts."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        cc = video.codec_context
        info = {
            "width": cc.width,
            "height": cc.height,
            "fps": video.average_rate,
            "time_base": video.time_base,
            "codec": cc.name,
            "pix_fmt": cc.format.name if cc.format else None,
            "colorspace": cc.colorspace,
            "color_range": cc.color_range,
            "color_primaries": cc.color_primaries,
            "color_trc": cc.color_trc,
            "audio": [s.codec_context.name for s in container.streams.audio],
        }
        audio_packets = 0
        pts = []
        for packet in container.demux():
            if packet.stream.type == "audio" and packet.size:
                audio_packets += 1
        container.seek(0)
        raw = []
        for frame in container.decode(video=0):
            pts.append(frame.pts)
            raw.append(frame)
        info["frames"], info["pts"], info["audio_packets"] = len(pts), pts, audio_packets
        info["first_luma"] = (
            np.frombuffer(bytes(raw[0].planes[0]), np.uint8)
            .reshape(raw[0].height, raw[0].planes[0].line_size)[:, : raw[0].width]
            .copy()
        )
    return info
