"""Video decoding through PyAV (FFmpeg): probing, frames in presentation order, rotation.

Phones record portrait video as landscape frames plus a display matrix (the old `rotate` tag
becomes one when FFmpeg demuxes); `upright_rgb` applies it, so kept frames look as the video
plays. A packet that fails to decode is skipped and counted, not fatal: the frames stage fails
only when nothing decodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch_jobs.errors import StageError

NOT_A_VIDEO = "NOT_A_VIDEO"
NO_VIDEO_STREAM = "NO_VIDEO_STREAM"
NO_DECODABLE_FRAMES = "NO_DECODABLE_FRAMES"


@dataclass
class VideoInfo:
    codec: str
    width: int  # coded size, before rotation
    height: int
    fps: float
    duration_s: float | None  # None when the container does not say
    frame_count: int | None  # None when the container does not say
    rotation: int  # counter-clockwise degrees, a multiple of 90
    focal_35mm: float | None  # 35 mm equivalent focal length, when the container records it
    container: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DecodedFrame:
    index: int  # 0-based, in presentation order: names the output `{index:06d}.jpg`
    time_s: float  # from the first frame
    frame: Any  # av.VideoFrame


def _open(path: Path) -> Any:
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.InvalidDataError as exc:
        raise StageError(NOT_A_VIDEO, f"{path.name} is not a video FFmpeg can read "
                                      "(invalid data found when processing input)") from exc
    except av.error.FFmpegError as exc:
        raise StageError(NOT_A_VIDEO, f"{path.name} could not be opened as a video ({exc})") from exc


def _focal_35mm(metadata: dict[str, str]) -> float | None:
    """A 35 mm equivalent focal length from container tags (iPhone QuickTime keys and kin)."""
    for key, value in metadata.items():
        if "35mm" in key.lower() or "35_mm" in key.lower():
            m = re.search(r"\d+(\.\d+)?", str(value))
            if m and 5.0 <= float(m.group()) <= 300.0:
                return float(m.group())
    return None


def _first_rotation(container: Any, stream: Any) -> int:
    """The display rotation, read from the first decodable frame (the container carries it)."""
    for frame in container.decode(stream):
        return normalize_rotation(getattr(frame, "rotation", 0) or 0)
    return 0


def normalize_rotation(deg: float) -> int:
    """Counter-clockwise degrees rounded to a quarter turn, in {0, 90, 180, 270}."""
    return round(deg / 90.0) * 90 % 360


def probe(path: Path) -> VideoInfo:
    """What the video is; StageError NOT_A_VIDEO / NO_VIDEO_STREAM for bad input."""
    with _open(path) as container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise StageError(NO_VIDEO_STREAM, f"{path.name} has no video stream ({', '.join(kinds)})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        frames = int(stream.frames) if stream.frames else None
        if frames is None and duration and fps:
            frames = max(1, round(duration * fps))
        meta = {**dict(container.metadata), **dict(stream.metadata)}
        try:
            rotation = _first_rotation(container, stream)
        except Exception:  # decoding problems surface (and are counted) in iter_frames
            rotation = 0
        return VideoInfo(codec=ctx.name, width=int(ctx.width), height=int(ctx.height), fps=fps,
                         duration_s=duration if duration and math.isfinite(duration) else None,
                         frame_count=frames, rotation=rotation, focal_35mm=_focal_35mm(meta),
                         container=container.format.name)


def scan_timing(path: Path) -> tuple[int, float]:
    """(frames, duration in seconds) by reading packet timestamps, without decoding: for
    containers that do not state them (raw streams, some WebM files)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        count, first, last = 0, None, None
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            count += 1
            if packet.pts is not None and packet.time_base is not None:
                t = float(packet.pts * packet.time_base)
                first = t if first is None else min(first, t)
                last = t if last is None else max(last, t)
        rate = stream.average_rate or stream.guessed_rate
        step = 1.0 / float(rate) if rate else 0.0
        duration = (last - first + step) if first is not None and last is not None else count * step
        return count, duration


@dataclass
class DecodeStats:
    decoded: int = 0
    errors: int = 0


def iter_frames(path: Path, stats: DecodeStats | None = None) -> Iterator[DecodedFrame]:
    """Every decodable frame, in presentation order. Undecodable packets are skipped (counted in
    `stats.errors`)."""
    import av

    stats = stats if stats is not None else DecodeStats()
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: decoding is most of the cost
        start: float | None = None
        fps = float(stream.average_rate or stream.guessed_rate or 30)

        def emit(frame: Any) -> DecodedFrame:
            nonlocal start
            t = frame.time if frame.time is not None else stats.decoded / fps
            if start is None:
                start = t
            out = DecodedFrame(stats.decoded, max(0.0, t - start), frame)
            stats.decoded += 1
            return out

        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except (av.error.InvalidDataError, av.error.EOFError, av.error.UndefinedError):
                stats.errors += 1
                continue
            for frame in frames:
                yield emit(frame)
        # `demux` ends with a flush packet, so the decoder has been drained here.


def gray(frame: Any) -> np.ndarray:
    """The luma plane as HxW uint8 (coded orientation: scores do not depend on rotation)."""
    return frame.to_ndarray(format="gray")


def upright_rgb(frame: Any, rotation: int) -> np.ndarray:
    """HxWx3 uint8 RGB as the video is meant to be shown (display rotation applied)."""
    rgb = frame.to_ndarray(format="rgb24")
    k = normalize_rotation(rotation) // 90
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb
