"""A clip made from a photo, for tests, benchmarks and the Video tab's example: a slow pan and zoom over it, with a
sine tone.

The example clip (``falco/assets/example-clip.mp4``) is made from the example photo by
``python -m falco.video.synthetic falco/assets/example-clip.mp4``.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


def pan_zoom_frames(photo: Image.Image, frames: int, size: tuple[int, int], zoom: float = 0.15,
                    pan: float = 0.08) -> list[np.ndarray]:
    """``frames`` RGB frames of ``size``: a window over the photo that shrinks by ``zoom`` and moves by ``pan``
    (fractions of the photo) from the first frame to the last."""
    width, height = photo.size
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        scale = 1.0 - zoom * t
        w, h = width * scale, height * scale
        left = min(max((width - w) / 2 + pan * width * (t - 0.5), 0.0), width - w)
        top = (height - h) / 2
        box = (left, top, left + w, top + h)
        out.append(np.asarray(photo.convert("RGB").resize(size, Image.Resampling.BILINEAR, box=box)))
    return out


def write_clip(path: Path, frames: list[np.ndarray], fps: int = 12, codec: str = "ffv1", pix_fmt: str = "bgr0",
               audio_hz: float | None = 440.0, sample_rate: int = 16000, audio_codec: str = "flac",
               rotation: int = 0) -> Path:
    """Frames (and a sine tone as long as them) as a clip; the defaults are lossless (FFV1 RGB, FLAC) in .mkv.

    ``rotation`` (a multiple of 90 degrees, counter-clockwise) stores the frames turned back by it, with a display
    matrix that turns them by it: players show ``frames`` as given, as a phone's portrait clip (stored 1920x1080,
    rotation -90).  Needs PyAV's ``VideoStream.set_display_rotation`` (av >= 18.1)."""
    turns = rotation // 90
    frames = [np.ascontiguousarray(np.rot90(f, -turns)) for f in frames] if turns % 4 else frames
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if rotation:
            video.set_display_rotation(rotation)
        audio = None
        if audio_hz is not None:
            audio = out.add_stream(audio_codec, rate=sample_rate)
            audio.layout = "mono"
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            samples = int(round(len(frames) / fps * sample_rate))
            tone = (np.sin(2 * np.pi * audio_hz * np.arange(samples) / sample_rate) * 0.3 * 32767).astype(np.int16)
            chunk = 1024
            for start in range(0, samples, chunk):
                part = tone[None, start:start + chunk]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format="s16", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
                out.mux(audio.encode(frame))
            out.mux(audio.encode(None))
    return path


# The Video tab's example: short and small enough for the tab's CPU limit (VideoConfig.app_cpu_max_seconds) and a
# CPU's seconds per frame, in what browsers play (H.264 and AAC in MP4).
EXAMPLE_PHOTO = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
EXAMPLE_CLIP = EXAMPLE_PHOTO.with_name("example-clip.mp4")
EXAMPLE_FRAMES, EXAMPLE_FPS, EXAMPLE_SIZE = 10, 5, (320, 320)


def write_example_clip(path: Path = EXAMPLE_CLIP, photo: Path = EXAMPLE_PHOTO) -> Path:
    """The Video tab's example clip: 2 s over the example photo, with a tone."""
    with Image.open(photo) as image:
        frames = pan_zoom_frames(image, EXAMPLE_FRAMES, EXAMPLE_SIZE)
    return write_clip(Path(path), frames, fps=EXAMPLE_FPS, codec="libx264", pix_fmt="yuv420p", audio_codec="aac")


if __name__ == "__main__":
    print(write_example_clip(Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLE_CLIP))
