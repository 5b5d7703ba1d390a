"""Stage `frames`: a video or a photo set in, the frames worth reconstructing from out.

Input (request.json `input`): a video file (anything FFmpeg reads; the display rotation of
phone videos is applied) or a folder / `gs://` prefix of JPEG/PNG photos (EXIF orientation
applied).

Videos: the video's time is cut into `target_frames` equal intervals and each interval keeps
its sharpest well-exposed frame, so the kept frames spread evenly and a shaky moment costs one
interval its blurred frames, not the reconstruction. A kept frame is then dropped when it is
blurred against its neighbourhood, or a near-duplicate of the frame kept before it (the camera
did not move).

Photos (in natural name order) are not frames: a user chose each one. Every photo is kept unless
it is unusable: unreadable, a true duplicate of one kept before it, or with too few features
for SfM (too dark, too bright or too blurred; frame_quality). A backdrop of one colour is fine.
Where there are more usable photos than `target_frames`, an evenly spaced `target_frames` of
them are kept.

Kept frames are scaled down to `long_side`.

Outputs (docs/contracts.md, "Stage outputs"): `frames/images/{index:06d}.jpg` for a video
(`index` = the source frame number), `frames/images/{stem}.jpg` for photos;
`frames/report.json` with every frame seen, its scores, whether it was kept and why not, the
source's properties and a focal-length prior (pixels of the kept images) when EXIF or the
container records one.

Errors (bad input, exit 3): NOT_A_VIDEO, NO_VIDEO_STREAM, NO_DECODABLE_FRAMES, NO_IMAGES,
TOO_FEW_FRAMES.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batch_jobs import storage
from batch_jobs.errors import StageError
from batch_jobs.frames import photo_files, video_decode
from batch_jobs.frames import quality as fq
from batch_jobs.runner import StageContext
from batch_jobs.sfm import pairs as sfm_pairs
from core import gcs
from core.media import is_photo

VERSION = 1

NO_IMAGES = "NO_IMAGES"
TOO_FEW_FRAMES = "TOO_FEW_FRAMES"
JPEG_QUALITY = 95
REPORT_VERSION = 1
DUPLICATE_LOOKBACK = 20  # photos: compare with this many kept before (duplicates sit close in order)

# Reasons a frame is not kept (report.json `reason`).
NOT_SHARPEST = "not_sharpest_in_interval"
BLURRED = "blurred"
DUPLICATE = "duplicate"
UNREADABLE = "unreadable"
OVER_TARGET = "over_target_count"  # photos: more usable than `target_frames`, this one not evenly placed


@dataclass
class Seen:
    """One frame or photo the stage looked at."""

    source: str  # "frame 12" or the photo's relative path
    position: float  # seconds (video) or order (photos)
    interval: int
    index: int | None = None  # video frame number
    scores: fq.Scores | None = None
    reason: str | None = None  # None while a candidate / when kept
    kept: bool = False
    name: str | None = None  # output stem when kept
    relative_sharpness: float | None = None
    duplicate_of: str | None = None
    detail: str | None = None  # why an unreadable photo could not be read
    size: tuple[int, int] | None = None  # written (width, height)
    focal_px: float | None = None
    thumb: np.ndarray | None = field(default=None, repr=False)
    small: np.ndarray | None = field(default=None, repr=False)  # photos: frame_quality.small_gray

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "position": round(self.position, 4),
                             "interval": self.interval, "kept": self.kept, "reason": self.reason}
        if self.index is not None:
            d["index"] = self.index
        if self.scores is not None:
            d.update(self.scores.to_dict())
        if self.relative_sharpness is not None:
            d["relative_sharpness"] = round(self.relative_sharpness, 4)
        if self.duplicate_of is not None:
            d["duplicate_of"] = self.duplicate_of
        if self.detail is not None:
            d["detail"] = self.detail
        if self.kept:
            assert self.size is not None  # a kept frame is written
            d.update({"name": self.name, "file": f"images/{self.name}.jpg", "width": self.size[0],
                      "height": self.size[1], "focal_px": None if self.focal_px is None
                      else round(self.focal_px, 3)})
        return d


def fit_long_side(img: np.ndarray, long_side: int) -> np.ndarray:
    """Scale down (never up) so the long side is at most `long_side`."""
    import cv2

    h, w = img.shape[:2]
    s = long_side / max(h, w)
    if s >= 1.0:
        return img
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f"could not write {path}")


# -- the rules for video frames ---------------------------------------------------------------
def reject_blurred(seen: list[Seen], radius: float, limits: fq.QualityLimits) -> None:
    """Drop kept frames blurred against the frames around them (`radius` in position units)."""
    scored = [(s, s.scores) for s in seen if s.scores is not None]
    if not scored:
        return
    sharp = np.array([scores.sharpness for _, scores in scored])
    pos = np.array([s.position for s, _ in scored])
    for s, scores in scored:  # every kept frame was scored
        if not s.kept:
            continue
        ref = fq.local_median(sharp, pos, s.position, radius)
        s.relative_sharpness = scores.sharpness / ref if ref > 0 else None
        if fq.is_blurred(scores.sharpness, ref, limits):
            s.kept, s.reason = False, BLURRED


def reject_duplicates(seen: list[Seen], limits: fq.QualityLimits, lookback: int) -> None:
    """Drop a kept frame whose thumbnail matches one of the `lookback` frames kept before it."""
    kept: list[tuple[Seen, np.ndarray]] = []  # with its thumbnail
    for s in seen:
        if not s.kept:
            continue
        assert s.thumb is not None  # a kept frame keeps its thumbnail
        for prev, prev_thumb in kept[-lookback:]:
            if fq.thumb_distance(s.thumb, prev_thumb) < limits.duplicate_distance:
                s.kept, s.reason, s.duplicate_of = False, DUPLICATE, prev.source
                break
        else:
            kept.append((s, s.thumb))


def _summary(seen: list[Seen]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in seen:
        if not s.kept and s.reason:
            out[s.reason] = out.get(s.reason, 0) + 1
    return dict(sorted(out.items()))


def check_enough(seen: list[Seen], min_frames: int, what: str) -> None:
    kept = sum(s.kept for s in seen)
    if kept < min_frames:
        why = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in _summary(seen).items()) or "none rejected"
        raise StageError(TOO_FEW_FRAMES, f"only {kept} usable frame(s) of {len(seen)} {what} "
                                         f"(at least {min_frames} needed; {why})")


# -- video ------------------------------------------------------------------------------------
def select_video(path: Path, out_images: Path, params: dict[str, Any], limits: fq.QualityLimits,
                 ctx: StageContext | None = None) -> tuple[list[Seen], dict[str, Any]]:
    info = video_decode.probe(path)
    target = int(params["target_frames"])
    long_side = int(params["long_side"])
    duration = info.duration_s
    if not duration and info.frame_count and info.fps:
        duration = info.frame_count / info.fps
    if not duration or not info.frame_count:  # the container does not say: count the packets
        frame_count, duration = video_decode.scan_timing(path)
        info.frame_count = info.frame_count or frame_count
    # Intervals in seconds; without any timing, one interval per frame.
    interval_s = duration / target if duration else 0.0
    expected = info.frame_count or 0

    seen: list[Seen] = []
    best: dict[int, tuple[Seen, fq.Scores, Any]] = {}  # interval -> (sharpest so far, its scores, av frame)
    stats = video_decode.DecodeStats()
    focal_full = None
    if info.focal_35mm:
        focal_full = info.focal_35mm / photo_files.FULL_FRAME_DIAGONAL_MM * math.hypot(info.width, info.height)

    def finish(interval: int) -> None:
        cand, _, frame = best.pop(interval)
        rgb = fit_long_side(video_decode.upright_rgb(frame, info.rotation), long_side)
        cand.kept, cand.name = True, f"{cand.index:06d}"
        cand.size = (rgb.shape[1], rgb.shape[0])
        if focal_full:
            cand.focal_px = focal_full * max(cand.size) / max(info.width, info.height)
        write_jpeg(out_images / f"{cand.name}.jpg", rgb)

    for df in video_decode.iter_frames(path, stats):
        scores, thumb = fq.score(video_decode.gray(df.frame))
        interval = min(target - 1, int(df.time_s / interval_s)) if interval_s > 0 else df.index
        s = Seen(source=f"frame {df.index}", position=df.time_s, interval=interval, index=df.index,
                 scores=scores)
        seen.append(s)
        for done in [k for k in best if k < interval]:
            finish(done)
        problem = fq.exposure_problem(scores, limits)
        if problem:
            s.reason = problem
        elif interval not in best or scores.sharpness > best[interval][1].sharpness:
            if interval in best:
                best[interval][0].reason = NOT_SHARPEST
                best[interval][0].thumb = None  # memory stays bounded by the kept frames, not the seen
            s.thumb = thumb
            best[interval] = (s, scores, df.frame)
        else:
            s.reason = NOT_SHARPEST
        if ctx is not None and stats.decoded % 10 == 0:
            frac = stats.decoded / expected if expected else (df.time_s / duration if duration else 0.0)
            ctx.progress.update(0.9 * min(1.0, frac), f"decoding: {stats.decoded} frames")
    for k in sorted(best):
        finish(k)
    if not seen:
        raise StageError(video_decode.NO_DECODABLE_FRAMES,
                         f"{path.name}: no frame could be decoded ({stats.errors} undecodable packets)")

    radius = max(1.5, 1.5 * interval_s)
    reject_blurred(seen, radius, limits)
    reject_duplicates(seen, limits, lookback=1)
    for s in seen:
        if not s.kept and s.name:  # written, then rejected
            (out_images / f"{s.name}.jpg").unlink(missing_ok=True)
            s.name = None
    source = {"kind": "video", **info.to_dict(), "frames_decoded": stats.decoded,
              "decode_errors": stats.errors, "interval_s": round(interval_s, 6)}
    return seen, source


# -- photos -----------------------------------------------------------------------------------
def _unique_stem(stem: str, taken: set[str]) -> str:
    stem = re.sub(r"[^\w.\-]", "_", stem) or "photo"
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}_{k}", k + 1
    taken.add(name)
    return name


def select_photos(folder: Path, out_images: Path, params: dict[str, Any], limits: fq.QualityLimits,
                  ctx: StageContext | None = None) -> tuple[list[Seen], dict[str, Any]]:
    import cv2

    photos, others = photo_files.list_photos(folder)
    if not photos:
        listed = f" (found only: {', '.join(others[:5])}{', …' if len(others) > 5 else ''})" if others else ""
        raise StageError(NO_IMAGES, f"no JPEG or PNG photos in the input folder{listed}")
    target = int(params["target_frames"])
    long_side = int(params["long_side"])
    n = len(photos)
    seen: list[Seen] = []
    cameras: set[str] = set()
    for i, p in enumerate(photos):
        s = Seen(source=p.relative_to(folder).as_posix(), position=float(i), interval=i)
        seen.append(s)
        try:
            photo = photo_files.read_photo(p, fq.SCORE_LONG_SIDE)
        except Exception as exc:  # a corrupt file is that photo's problem, not the set's
            s.reason, s.detail = UNREADABLE, f"{type(exc).__name__}: {exc}"[:200]
            continue
        cameras.add(photo.camera)
        gray = fq.scoring_gray(cv2.cvtColor(photo.rgb, cv2.COLOR_RGB2GRAY))  # scaled once, for every score
        scores, s.thumb = fq.score(gray)
        s.scores = dataclasses.replace(scores, features=fq.feature_count(gray))
        s.small = fq.small_gray(gray)
        if ctx is not None:
            ctx.progress.update(0.5 * (i + 1) / n, f"scoring photos: {i + 1}/{n}")
    scored = [(s, s.scores) for s in seen if s.scores is not None]
    if not scored:
        raise StageError(video_decode.NO_DECODABLE_FRAMES, f"none of the {n} photos could be read")
    median_features = float(np.median([scores.features for _, scores in scored]))
    median_sharpness = float(np.median([scores.sharpness for _, scores in scored]))
    usable: list[Seen] = []
    for s, scores in scored:
        s.reason = fq.photo_problem(scores, median_features, median_sharpness, limits)
        if s.reason is None:
            s.relative_sharpness = scores.sharpness / median_sharpness if median_sharpness > 0 else None
            s.reason, s.duplicate_of = _duplicate_of(s, usable, limits)
        if s.reason is None:
            usable.append(s)
    chosen = {id(usable[k]) for k in sfm_pairs.evenly_spaced(len(usable), target)}
    for s in usable:
        s.kept = id(s) in chosen
        s.reason = None if s.kept else OVER_TARGET

    taken: set[str] = set()
    kept = [s for s in seen if s.kept]
    for j, s in enumerate(kept):
        photo = photo_files.read_photo(folder / s.source, long_side)
        rgb = fit_long_side(photo.rgb, long_side)
        s.name = _unique_stem(Path(s.source).stem, taken)
        s.size = (rgb.shape[1], rgb.shape[0])
        if photo.focal_px:
            s.focal_px = photo.focal_px * max(s.size) / max(photo.full_size)
        write_jpeg(out_images / f"{s.name}.jpg", rgb)
        if ctx is not None:
            ctx.progress.update(0.5 + 0.45 * (j + 1) / len(kept), f"writing photos: {j + 1}/{len(kept)}")
    source = {"kind": "images", "files": n, "other_files": others, "cameras": sorted(c for c in cameras if c)}
    return seen, source


def _duplicate_of(s: Seen, usable: list[Seen], limits: fq.QualityLimits) -> tuple[str | None, str | None]:
    """(DUPLICATE, the photo it repeats) when `s` is a true duplicate of one of the last
    DUPLICATE_LOOKBACK usable photos, else (None, None)."""
    assert s.thumb is not None and s.small is not None  # set with its scores
    for prev in usable[-DUPLICATE_LOOKBACK:]:
        assert prev.thumb is not None and prev.small is not None
        if (fq.thumb_distance(s.thumb, prev.thumb) < limits.duplicate_distance
                and fq.same_photo(s.small, prev.small, limits)):
            return DUPLICATE, prev.source
    return None, None


# -- the stage --------------------------------------------------------------------------------
def _local_input(ctx: StageContext) -> Path:
    """The input as a local file or folder (downloaded when it is a gs:// URI)."""
    uri = ctx.input_uri
    if not storage.is_gcs(uri):
        return Path(uri)
    dest = ctx.work_root / "input"
    if storage.exists(uri):
        with ctx.timed("download"):
            ctx.progress.update(0.0, "downloading the video")
            return storage.download(uri, dest / Path(gcs.split_uri(uri)[1]).name)
    with ctx.timed("download"):
        storage.download_tree(uri, dest / "photos", progress=lambda d, n: ctx.progress.update(
            0.0, f"downloading photos: {d}/{n}"))
    return dest / "photos"


def common_focal(kept: list[Seen]) -> float | None:
    """The focal prior when every kept frame has one and they agree (one camera)."""
    f = [s.focal_px / max(s.size) for s in kept if s.focal_px and s.size]  # a focal is set with the size
    if not f or len(f) != len(kept) or max(f) - min(f) > 1e-3 * max(f):
        return None
    return float(np.median([s.focal_px for s in kept]))


def run(ctx: StageContext) -> dict[str, Any]:
    params = ctx.params
    limits = fq.QualityLimits()
    src = _local_input(ctx)
    out_images = ctx.out_dir / "images"
    out_images.mkdir(parents=True, exist_ok=True)
    with ctx.timed("select"):
        if src.is_dir():
            seen, source = select_photos(src, out_images, params, limits, ctx)
        elif is_photo(src.name):
            raise StageError(TOO_FEW_FRAMES, f"{src.name} is a single photo; a reconstruction needs a "
                                             f"video or a folder of at least {params['min_frames']} photos")
        else:
            seen, source = select_video(src, out_images, params, limits, ctx)
    kept = [s for s in seen if s.kept]
    report = {
        "version": REPORT_VERSION,
        "input": ctx.input_uri,
        "source": source,
        "params": {k: params[k] for k in sorted(params)},
        "limits": limits.to_dict(),
        "seen": len(seen),
        "kept": len(kept),
        "rejected": _summary(seen),
        "focal_px": common_focal(kept),
        "images": [f"{s.name}.jpg" for s in kept],
        "frames": [s.to_dict() for s in seen],
    }
    ctx.write_report(report)
    # A request for fewer frames than the preset's minimum gets what it asked for (3 at least).
    min_frames = max(3, min(int(params["min_frames"]), int(params["target_frames"])))
    check_enough(seen, min_frames, "seen" if source["kind"] == "video" else "photos")
    ctx.progress.update(0.95, f"kept {len(kept)} of {len(seen)} frames")
    return {"kind": source["kind"], "seen": len(seen), "kept": len(kept), "rejected": report["rejected"]}
