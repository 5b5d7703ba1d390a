"""Photo sets: which files are photos, reading them upright (EXIF orientation), EXIF focal length.

Pillow reads every photo type core.media lists (16-bit images scaled to 8 bits); a JPEG is decoded straight at a reduced scale when only a smaller
copy is needed (`draft`), which makes scoring a set of 12-megapixel photos cheap.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.media import PHOTO_EXTENSIONS

_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
_MAKE, _MODEL = 0x010F, 0x0110
_FOCAL_LENGTH = 0x920A
_FOCAL_35MM = 0xA405
_FOCAL_PLANE_XRES = 0xA20E
_FOCAL_PLANE_UNIT = 0xA210
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # inch, cm, mm, um
FULL_FRAME_DIAGONAL_MM = 43.2666  # the 35 mm film frame (36 x 24 mm)


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_photos(folder: Path) -> tuple[list[Path], list[str]]:
    """(photos in natural name order, other files' relative names)."""
    photos, others = [], []
    for p in sorted(folder.rglob("*"), key=lambda p: _natural_key(p.relative_to(folder).as_posix())):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if p.suffix.lower() in PHOTO_EXTENSIONS and not p.name.startswith("."):
            photos.append(p)
        else:
            others.append(rel)
    return photos, others


@dataclass
class Photo:
    rgb: np.ndarray  # HxWx3 uint8, upright
    full_size: tuple[int, int]  # (width, height) of the whole photo, upright
    orientation: int  # the EXIF orientation tag applied (1 = none)
    focal_px: float | None  # focal length in pixels of `full_size`, from EXIF
    camera: str  # EXIF make + model, '' when absent


def _focal_px(exif: Any, width: int, height: int) -> float | None:
    """Focal length in pixels from EXIF: the 35 mm equivalent, else mm and the sensor's pixel pitch."""
    sub = exif.get_ifd(_EXIF_IFD) if exif else {}
    try:
        f35 = float(sub.get(_FOCAL_35MM) or 0)
        if f35 > 0:
            return f35 / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height)
        f_mm = float(sub.get(_FOCAL_LENGTH) or 0)
        xres = float(sub.get(_FOCAL_PLANE_XRES) or 0)
        unit = _UNIT_MM.get(int(sub.get(_FOCAL_PLANE_UNIT) or 2))
        if f_mm > 0 and xres > 0 and unit:
            # FocalPlaneXResolution is pixels per unit along the sensor's x (the stored width).
            return f_mm * xres / unit
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


def read_photo(path: Path, min_long_side: int | None = None) -> Photo:
    """The photo upright as RGB; with `min_long_side`, possibly a smaller copy (JPEG draft decoding
    at 1/2, 1/4 or 1/8 scale) whose long side is still at least that."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        exif = im.getexif()
        orientation = int(exif.get(_ORIENTATION, 1) or 1)
        stored_w, stored_h = im.size
        focal = _focal_px(exif, stored_w, stored_h)
        camera = " ".join(str(exif.get(t, "")).strip("\x00 ") for t in (_MAKE, _MODEL)).strip()
        if min_long_side and im.format == "JPEG":
            s = min_long_side / max(stored_w, stored_h)
            if s < 1.0:
                im.draft("RGB", (math.ceil(stored_w * s), math.ceil(stored_h * s)))
        upright = ImageOps.exif_transpose(im)
        rgb = _rgb8(upright)
    swapped = orientation in (5, 6, 7, 8)
    full = (stored_h, stored_w) if swapped else (stored_w, stored_h)
    return Photo(rgb=rgb, full_size=full, orientation=orientation, focal_px=focal, camera=camera)


def _rgb8(im: Any) -> np.ndarray:
    """8-bit RGB of any mode Pillow opens; 16-bit and 32-bit integer images (TIFF scans, PNG
    exports) keep their range instead of clipping at 255, as `convert("RGB")` would."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))
