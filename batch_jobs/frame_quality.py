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

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


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
