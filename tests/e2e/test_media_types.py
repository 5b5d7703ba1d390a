"""Every photo type the service accepts (core.media) goes through: a folder of WebP, TIFF and PNG
photos, uploaded by the SDK the way `splatpipe submit FOLDER` does, is read by the frames stage,
solved by sfm and splatted, through the whole local stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stackclient import StackClient

from core.media import PHOTO_EXTENSIONS
from splatpipe.client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FORMATS = (".webp", ".tif", ".png")  # Pillow's lossless WebP, LZW TIFF and PNG
QUICK = {"preset": "preview", "depth": False, "mesh": False, "splat_steps": 30}


def _mixed_folder(pngs: list[Path], dest: Path) -> list[Path]:
    from PIL import Image

    out = []
    for i, src in enumerate(pngs):
        ext = FORMATS[i % len(FORMATS)]
        target = dest / f"photo_{i:02d}{ext}"
        with Image.open(src) as im:
            kwargs = {"lossless": True} if ext == ".webp" else {"compression": "tiff_lzw"} if ext == ".tif" else {}
            im.convert("RGB").save(target, **kwargs)
        out.append(target)
    return out


def test_a_folder_of_webp_tiff_and_png_photos_is_reconstructed(stack: StackClient, synthetic_images: dict[str, Path],
                                                               tmp_path: Path) -> None:
    assert all(ext in PHOTO_EXTENSIONS for ext in FORMATS)
    pngs = sorted(Path(synthetic_images["images"]).glob("*.png"))
    photos = _mixed_folder(pngs, tmp_path)
    req = Client(stack.urls["api"]).submit(tmp_path, session_id="e2e-media", options=QUICK)
    status = stack.wait([req.request_id], timeout=900)[req.request_id]
    assert status["state"] == "COMPLETED", status.get("error")
    frames = json.loads(stack.read(status["outputs"]["frames_report"]))
    assert frames["kept"] == len(photos), frames["rejected"]
    sfm = json.loads(stack.read(status["outputs"]["sfm_report"]))
    assert sfm["registered"] == len(photos), sfm.get("unregistered")
    assert status["outputs"]["splat_spz"] and status["stages"]["splat"]["state"] == "SUCCEEDED"
