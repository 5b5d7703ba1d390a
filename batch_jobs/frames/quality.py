"""Frame quality: sharpness, exposure and near-duplicate scores, and the rules that reject.

Every score is measured on a grayscale copy scaled to a fixed long side (SCORE_LONG_SIDE), so
the numbers of one input compare with each other whatever its resolution.

- sharpness: the variance of the Laplacian (high for crisp edges; motion blur and defocus
  remove exactly the high frequencies it measures). A frame is *blurred* when it scores below
  `blur_ratio` times the median of its neighbourhood (blur is relative: a dim indoor video has
  lower scores throughout than a sunny facade), or below an absolute floor.
- exposure: mean brightness and the fractions of crushed-black and clipped-white pixels.
- near-duplicates: a 64-pixel-wide, blurred, contrast-normalised thumbnail; the mean absolute
  difference of two thumbnails is ~0.06 per degree of camera rotation on the synthetic orbit
  and ~0 for a camera that did not move, whatever the exposure change.
- features (photos): the SIFT keypoints OpenCV finds on the scoring copy, which is what the sfm
  stage needs of a photo. A photo a user chose is judged by that, not by its histogram: an
  object on a black backdrop is mostly dark pixels and still has hundreds of features (measured:
  real photos with all but the central ninth blacked out keep 70-290 of their 1100), while a
  photo too dark or too blurred to use has next to none (the same photos at 5 % brightness: 0;
  with 25 px of motion blur: 150-370).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SCORE_LONG_SIDE = 640
THUMB_WIDTH = 64


@dataclass(frozen=True)
class QualityLimits:
    """The rejection rules' thresholds (recorded in frames/report.json)."""

    blur_ratio: float = 0.35  # sharpness below this fraction of the local median: blurred
    min_sharpness: float = 5.0  # below this whatever the neighbours: blurred
    min_brightness: float = 25.0  # mean gray level (0..255)
    max_brightness: float = 230.0
    max_dark_fraction: float = 0.6  # pixels <= DARK_LEVEL
    max_bright_fraction: float = 0.6  # pixels >= BRIGHT_LEVEL
    duplicate_distance: float = 0.03  # thumbnail distance below this: a near-duplicate
    # Photos: unusable with fewer features than this, or than `feature_ratio` x the set's median.
    min_features: int = 50
    feature_ratio: float = 0.3
    # Photos: a true duplicate also differs by less than this many gray levels where either shows
    # more than a black or white backdrop (a contrast-normalised thumbnail of a small object on a
    # backdrop changes little when the object turns).
    same_photo_gray: float = 4.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DARK_LEVEL = 16
BRIGHT_LEVEL = 250


@dataclass(frozen=True)
class Scores:
    sharpness: float
    brightness: float
    dark_fraction: float
    bright_fraction: float
    features: int | None = None  # photos only (feature_count)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items() if v is not None}


def scoring_gray(gray: np.ndarray) -> np.ndarray:
    """`gray` (HxW uint8) scaled down to SCORE_LONG_SIDE, as float32."""
    import cv2

    h, w = gray.shape[:2]
    s = SCORE_LONG_SIDE / max(h, w)
    if s < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return gray.astype(np.float32)


def score(gray: np.ndarray) -> tuple[Scores, np.ndarray]:
    """Scores and the near-duplicate thumbnail of a grayscale image (HxW uint8)."""
    import cv2

    g = scoring_gray(gray)
    sharpness = float(cv2.Laplacian(g, cv2.CV_32F, ksize=1).var())
    scores = Scores(sharpness=sharpness, brightness=float(g.mean()),
                    dark_fraction=float((g <= DARK_LEVEL).mean()),
                    bright_fraction=float((g >= BRIGHT_LEVEL).mean()))
    return scores, thumbnail(g)


def feature_count(gray: np.ndarray) -> int:
    """SIFT keypoints on the scoring copy of a grayscale image (HxW, or that copy itself)."""
    import cv2

    g = np.clip(scoring_gray(gray), 0, 255).astype(np.uint8)
    return len(cv2.SIFT.create().detect(g, None))


def small_gray(gray: np.ndarray) -> np.ndarray:
    """The image at THUMB_WIDTH, in gray levels (for `same_photo`)."""
    import cv2

    h, w = gray.shape[:2]
    return cv2.resize(gray.astype(np.float32), (THUMB_WIDTH, max(1, round(THUMB_WIDTH * h / w))),
                      interpolation=cv2.INTER_AREA)


def same_photo(a: np.ndarray, b: np.ndarray, limits: QualityLimits) -> bool:
    """Two `small_gray` images differ by less than `same_photo_gray` levels on average, over the
    pixels where either shows more than a black or white backdrop."""
    if a.shape != b.shape:
        return False
    backdrop = ((a <= DARK_LEVEL) & (b <= DARK_LEVEL)) | ((a >= BRIGHT_LEVEL) & (b >= BRIGHT_LEVEL))
    if backdrop.all():
        return True
    return float(np.abs(a - b)[~backdrop].mean()) < limits.same_photo_gray


def photo_problem(s: Scores, median_features: float, median_sharpness: float, limits: QualityLimits) -> str | None:
    """Why a photo cannot be used (too few features for SfM, named by their likely cause), or None."""
    assert s.features is not None
    if s.features >= max(limits.min_features, limits.feature_ratio * median_features):
        return None
    if s.brightness < limits.min_brightness:
        return "underexposed"
    if s.brightness > limits.max_brightness:
        return "overexposed"
    if s.sharpness < limits.blur_ratio * median_sharpness:
        return "blurred"
    return "featureless"


def thumbnail(gray: np.ndarray) -> np.ndarray:
    import cv2

    h, w = gray.shape[:2]
    t = cv2.resize(gray.astype(np.float32), (THUMB_WIDTH, max(1, round(THUMB_WIDTH * h / w))),
                   interpolation=cv2.INTER_AREA)
    t = cv2.GaussianBlur(t, (0, 0), 1.0)
    return (t - t.mean()) / (t.std() + 1e-6)


def thumb_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (inf when their shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).mean())


def exposure_problem(s: Scores, limits: QualityLimits) -> str | None:
    """`underexposed`, `overexposed` or None."""
    if s.brightness < limits.min_brightness or s.dark_fraction > limits.max_dark_fraction:
        return "underexposed"
    if s.brightness > limits.max_brightness or s.bright_fraction > limits.max_bright_fraction:
        return "overexposed"
    return None


def is_blurred(sharpness: float, reference: float, limits: QualityLimits) -> bool:
    """Blurred against `reference` (the median sharpness of the neighbourhood)."""
    return sharpness < limits.min_sharpness or sharpness < limits.blur_ratio * reference


def local_median(values: np.ndarray, positions: np.ndarray, center: float, radius: float) -> float:
    """Median of `values` whose `positions` lie within `radius` of `center` (all if none)."""
    m = np.abs(positions - center) <= radius
    return float(np.median(values[m] if m.any() else values))
