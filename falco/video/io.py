"""Clips in and out through PyAV (FFmpeg's libraries in the wheel: no system ffmpeg).

    info = probe_video(path, config)                   # InputVideoError for what cannot be used
    for frame in read_frames(path): ...                # Frame(index, pts, pixels [H, W, 3] uint8 RGB), upright
    with VideoWriter(out_path, info) as writer:        # audio copied from the source as frames go in
        writer.write(frame.pts, pixels)

The writer keeps every frame's timestamp (same frame rate, frame count and timing, variable rates
included) and copies the audio packets as they are, interleaved by time; only an audio codec that the
output container cannot hold is re-encoded (to the container's default).  It writes beside the final
name and renames on success (falco.output_files.write_atomic's rule), so a failure leaves nothing half-written.

Phone clips store their frames sideways with a rotation in the display matrix (a portrait iPhone clip: 1920x1080
turned -90 degrees).  Frames are read as players show them (turned upright), so that dlib sees upright faces, and
the output is written upright at that size with no rotation of its own: it then shows the same in every player and
browser, including those that ignore the matrix (most do in WebM and Matroska), where keeping the stored orientation
plus the matrix would show it sideways.  The frames are encoded anew either way, so turning them costs no quality.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from falco.checks import check_video_length
from falco.config import VideoConfig
from falco.errors import InputVideoError

# Encoders that take the frame rate's time base and quality options.
_CRF_CODECS = {"libx264", "h264", "libx265", "hevc"}


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int                    # as displayed: the stored frame turned by ``rotation``
    height: int
    frames: int
    fps: Fraction                 # average frame rate
    seconds: float
    time_base: Fraction
    codec: str                    # the video codec's name
    pix_fmt: str
    audio_codec: str | None       # None: no audio track
    rotation: int = 0             # degrees counter-clockwise that players turn the stored frames (display matrix)


@dataclass(frozen=True)
class Frame:
    index: int
    pts: int | None               # in VideoInfo.time_base
    pixels: np.ndarray            # [H, W, 3] uint8 RGB, upright (the display matrix's rotation applied)


def probe_video(path: str | Path, config: VideoConfig = VideoConfig(), max_seconds: float | None = None) -> VideoInfo:
    """What the clip holds; InputVideoError when it is no readable clip, has no frame, or is over the limits
    (``max_seconds``, default ``config.max_seconds``).  Counts the frames by demuxing where the header does not."""
    path = Path(path)
    if not path.is_file():
        raise InputVideoError(f"Cannot read the clip: no file named {path.name}.")
    if path.stat().st_size == 0:
        raise InputVideoError("The clip is empty (0 bytes).")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputVideoError("The file holds no video track.")
            stream = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            ctx = stream.codec_context
            fps = stream.average_rate or stream.guessed_rate
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            if not frames or not fps or not ctx.width or not ctx.height:
                raise InputVideoError("The clip holds no frame.")
            seconds = float(stream.duration * stream.time_base) if stream.duration else float(frames / fps)
            rotation = _first_frame_rotation(path)
            width, height = (ctx.height, ctx.width) if _quarter_turns(rotation) % 2 else (ctx.width, ctx.height)
            info = VideoInfo(path, width, height, frames, Fraction(fps), seconds, Fraction(stream.time_base),
                             ctx.name, ctx.format.name if ctx.format else "yuv420p",
                             audio.codec_context.name if audio is not None else None, rotation)
    except av.FFmpegError as err:
        raise InputVideoError(f"The file is not a clip this app can read, or it is damaged ({_reason(err)}).") from None
    if info.width * info.height > config.max_frame_pixels:
        raise InputVideoError(f"The frames are too large ({info.width}x{info.height}): at most "
                              f"{config.max_frame_pixels / 1e6:.1f} megapixels per frame.")
    check_video_length(info.seconds, config.max_seconds if max_seconds is None else max_seconds)
    return info


def read_frames(path: str | Path) -> Iterator[Frame]:
    """Every frame in display order as upright RGB; a damaged stream ends in InputVideoError."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                yield Frame(index, frame.pts, upright_pixels(frame))
    except av.FFmpegError as err:
        raise InputVideoError(f"The clip is damaged ({_reason(err)}).") from None


def upright_pixels(frame: av.VideoFrame) -> np.ndarray:
    """The frame as RGB, turned by its display matrix's rotation as players turn it (FFmpeg's autorotate).
    Only quarter turns, as FFmpeg does; a flip in the matrix (rare) is not applied."""
    pixels = frame.to_ndarray(format="rgb24")
    turns = _quarter_turns(frame.rotation)
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def _quarter_turns(rotation: float) -> int:
    """Counter-clockwise quarter turns (0..3) nearest to ``rotation`` degrees: np.rot90's ``k``."""
    return round(rotation / 90) % 4 if np.isfinite(rotation) else 0


def _first_frame_rotation(path: Path) -> int:
    """The display matrix's rotation in quarter turns (-90, 90, 180): FFmpeg copies the stream's matrix to every
    decoded frame's side data, where PyAV (>= 14) reads it (``VideoFrame.rotation``)."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            turns = _quarter_turns(frame.rotation)
            return 90 * (turns - 4 if turns == 3 else turns)
    return 0


def _reason(err: av.FFmpegError) -> str:
    """FFmpeg's words without the file name (a server path in the app)."""
    return getattr(err, "strerror", None) or type(err).__name__


def container_format(path: Path, config: VideoConfig) -> str:
    formats = dict(config.container_formats)
    if path.suffix.lower() not in formats:
        raise InputVideoError(f"Cannot write a {path.suffix or 'nameless'} clip; use one of "
                              f"{', '.join(formats)}.")
    return formats[path.suffix.lower()]


class VideoWriter:
    """Writes ``path`` (via a temporary name beside it) with ``source``'s timing and audio.

    ``codec``: the video encoder (None: the source's, where PyAV can write it in this container, else the
    container's default)."""

    def __init__(self, path: str | Path, source: VideoInfo, codec: str | None = None,
                 config: VideoConfig = VideoConfig()):
        self.path, self.source = Path(path), source
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._out = av.open(str(self.tmp), "w", format=container_format(self.path, config))
        try:
            self._video = self._add_video(codec, config)
            self._audio_in = self._audio_out = self._resampler = None
            self._pending_audio: Iterator[av.Packet] = iter(())
            self._next_audio = None
            if source.audio_codec is not None:
                self._open_audio()
        except BaseException:
            self.abort()
            raise

    def _add_video(self, codec: str | None, config: VideoConfig):
        source = self.source
        name = codec or source.codec
        if not _can_encode(name) or name not in self._out.supported_codecs:
            name = self._out.default_video_codec
        stream = self._out.add_stream(name, rate=source.fps)
        # The frames come upright and go out so, with no display matrix (the module's docstring says why).
        stream.width, stream.height = source.width, source.height
        formats = [f.name for f in (av.codec.Codec(name, "w").video_formats or ())]
        pix_fmt = source.pix_fmt if source.pix_fmt in formats else (formats[0] if formats else "yuv420p")
        if pix_fmt.startswith("yuv420") and (source.width % 2 or source.height % 2) and "yuv444p" in formats:
            pix_fmt = "yuv444p"   # 4:2:0 needs even sides
        stream.pix_fmt = pix_fmt
        stream.time_base = source.time_base
        stream.codec_context.time_base = source.time_base
        if name in _CRF_CODECS:
            stream.options = {"crf": str(config.crf)}
        return stream

    def _open_audio(self) -> None:
        self._audio_in = av.open(str(self.source.path))
        template = self._audio_in.streams.audio[0]
        if template.codec_context.name in self._out.supported_codecs:
            self._audio_out = self._out.add_stream_from_template(template)
        else:   # the container cannot hold this codec: re-encode to its default
            self._audio_out = self._out.add_stream(self._out.default_audio_codec, rate=template.rate)
            self._audio_out.layout = template.layout
            fmt = (av.codec.Codec(self._audio_out.codec_context.name, "w").audio_formats or [None])[0]
            self._resampler = av.AudioResampler(format=fmt.name if fmt else None, layout=template.layout,
                                                rate=template.rate)
        self._pending_audio = (p for p in self._audio_in.demux(template) if p.dts is not None)
        self._next_audio = next(self._pending_audio, None)

    def write(self, pts: int | None, pixels: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        frame.pts, frame.time_base = pts, self.source.time_base
        if pts is not None:
            self._mux_audio_until(float(pts * self.source.time_base))
        self._out.mux(self._video.encode(frame))

    def _mux_audio_until(self, seconds: float | None) -> None:
        while self._next_audio is not None and (
                seconds is None or float(self._next_audio.dts * self._next_audio.time_base) <= seconds):
            packet = self._next_audio
            if self._resampler is None:
                packet.stream = self._audio_out
                self._out.mux(packet)
            else:
                for frame in packet.decode():
                    for resampled in self._resampler.resample(frame):
                        self._out.mux(self._audio_out.encode(resampled))
            self._next_audio = next(self._pending_audio, None)

    def close(self) -> Path:
        """Flushes the encoders, the rest of the audio, and renames the file into place."""
        try:
            self._out.mux(self._video.encode(None))
            self._mux_audio_until(None)
            if self._resampler is not None:
                self._out.mux(self._audio_out.encode(None))
            self._out.close()
            if self._audio_in is not None:
                self._audio_in.close()
            self.tmp.replace(self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Closes the file unfinished and deletes it: nothing is left under either name."""
        for container in (self._out, getattr(self, "_audio_in", None)):
            try:
                if container is not None:
                    container.close()
            except av.FFmpegError:
                pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def _can_encode(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
        return True
    except (av.FFmpegError, ValueError):
        return False
