"""Real photo sets (no ground truth) through the real local stack at the `preview` preset, the way
a user sends them: the photos uploaded under a session prefix, then `_UPLOAD_COMPLETE`.

- sceaux-castle: 11 photos of a building facade (3072x2048).
- monstree: 23 iPhone photos stored rotated (EXIF orientation 6).
- fox: 50 frames of a handheld phone orbit, no EXIF, with reference poses: at the full `preview`
  (its 40 evenly chosen photos, 1000 splat steps) the cameras must match the reference to 0.5 %
  of the rig radius (plain pycolmap: about 1 %) and the held-out PSNR reach 25 dB.

Each must register every image, pass the SfM verification, reach a held-out PSNR above a
measured floor, and give a mesh; the status must show those figures under `metrics`. The
datasets live beside the repository (`../shared/datasets`) and are read from there.

Measured (one run each, `preview` with 300 splat steps, CPU, on the 2-core development machine
while other test runs kept its load average at 9-13):

| capture       | registered | reproj. | verify: rot. err. median / p95 | held-out PSNR / SSIM | Gaussians | mesh vertices / faces | wall time (splat) |
|---------------|-----------:|--------:|-------------------------------:|---------------------:|----------:|----------------------:|------------------:|
| sceaux-castle | 11/11      | 0.733 px| 0.243° / 2.07°, 0 of 55 pairs disagree | 14.06 dB / 0.664 | 39 978 | 58 107 / 111 110 | 1710 s (1470 s) |
| monstree      | 23/23      | 0.619 px| 0.170° / 0.72°, 0 of 154 pairs disagree | 18.84 dB / 0.538 | 39 979 | 187 261 / 356 143 | 2547 s (1951 s) |

Training ran at 0.17-0.22 steps/s there, so these tests take most of an hour on that machine:
far from the few minutes wanted, but each capture needs a splat trained for long enough that
its PSNR says something about the cameras.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from stackclient import StackClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
from core.media import PHOTO_EXTENSIONS as IMAGE_SUFFIXES  # noqa: E402

# `preview` with 300 of its 1000 training steps: the preset's full training would take over an
# hour per capture on that machine (see the timings above).
OPTIONS = {"preset": "preview", "splat_steps": 300}
WAIT_SECONDS = 3600  # per capture; measured 1710 s and 2547 s on a loaded 2-core machine


@dataclass(frozen=True)
class Capture:
    name: str
    images: int
    psnr_floor: float  # dB on the held-out views; see the measurements in CAPTURES
    options: tuple[tuple[str, Any], ...] = tuple(OPTIONS.items())
    kept: int | None = None  # photos the frames stage keeps, when the preset caps the count
    max_centre_error_pct: float | None = None  # vs the set's cameras.json, % of the rig radius


# Floors: the measured held-out PSNR (above) less 2 dB. At 300 steps the training is far from
# converged (sceaux: 15.6 dB on its training views, monstree 18.3 dB), so a slightly different
# SfM solution or thread timing moves the figure; 2 dB is the margin for that (one run each was
# measured, so the spread itself is not). Wrong cameras leave the held-out views unexplained and
# fall further than that at full training; at 300 steps that was not measured.
CAPTURES = (
    Capture("sceaux-castle", 11, psnr_floor=12.0),  # measured 14.06 dB
    Capture("monstree", 23, psnr_floor=16.8),  # measured 18.84 dB
    # The goals of the fox capture, not a measured floor: it failed sfm_unreliable before the
    # self-calibration (docs/benchmarks.md, "SfM robustness"). Centres: plain pycolmap incremental
    # on all 50 photos is 0.97-1.24 % of the rig radius off; the goal is 0.5 %. When GLOMAP's model
    # was published, ours varied with the thread count (0.17-0.84 %; 0.68 % on the CI machine);
    # the self-calibration's model with its principal point refined measured 0.18-0.20 % in every
    # run, threads 1 to 8 (sfm_mapping.reconstruct). A wrong model is 66-86 % off.
    Capture("fox", 50, psnr_floor=25.0, options=(("preset", "preview"),), kept=40, max_centre_error_pct=0.5),
)


def _photos(capture: Capture) -> list[Path]:
    folder = DATASETS / capture.name / "images"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not there (the shared datasets are not on this machine)")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _report(stack: StackClient, status: dict[str, Any], name: str) -> dict[str, Any]:
    return json.loads(stack.read(status["outputs"][name]))


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_real_capture_at_preview(stack: StackClient, capture: Capture) -> None:
    photos = _photos(capture)
    assert len(photos) == capture.images
    session = f"e2e-real-{capture.name}"
    for p in photos:
        stack.put_object(stack.uploads, f"{session}/images/{p.name}", p.read_bytes(), content_type="image/jpeg")
    started = time.monotonic()
    stack.put_object(stack.uploads, f"{session}/images/_UPLOAD_COMPLETE", b"",
                     metadata={"options": json.dumps(dict(capture.options))}, content_type="text/plain")
    rid = stack.request_for_input(f"gs://{stack.uploads}/{session}/images/")
    status = stack.wait([rid], timeout=WAIT_SECONDS)[rid]
    seconds = time.monotonic() - started
    assert status["state"] == "COMPLETED", status.get("error")
    assert status.get("warnings", []) == [], status["warnings"]
    assert all(st["state"] == "SUCCEEDED" for st in status["stages"].values()), status["stages"]

    sfm = _report(stack, status, "sfm_report")
    kept = capture.kept or capture.images
    assert sfm["registered"] == kept and sfm["unregistered"] == [], sfm
    # What a client sees without downloading a report: every image registered, the camera
    # solution verified against its own evidence, the splat's held-out figures.
    shown = status["metrics"]
    assert shown["sfm"]["registered_images"] == kept and shown["sfm"]["registered_fraction"] == 1
    assert shown["sfm"]["verify_passed"] is True, shown["sfm"]
    splat = _report(stack, status, "splat_report")
    mesh = _report(stack, status, "mesh_report")
    print(f"\n{capture.name}: {seconds:.0f} s, registered {sfm['registered']}/{sfm['total']}, "
          f"verification {({k: v for k, v in shown['sfm'].items() if k.startswith('verify_')})}, "
          f"reprojection {sfm.get('mean_reprojection_error_px', sfm.get('mean_reprojection_error'))} px, held-out PSNR {splat['heldout_psnr']} dB "
          f"SSIM {splat['heldout_ssim']}, {splat['gaussians']} Gaussians, mesh {mesh['vertices']} vertices "
          f"{mesh['faces']} faces; stage seconds "
          + ", ".join(f"{s}={_stage_seconds(st)}" for s, st in status["stages"].items()))
    assert splat["n_test_views"] >= 1
    assert splat["heldout_psnr"] >= capture.psnr_floor, splat["held_out"]
    assert shown["splat"]["heldout_psnr"] == splat["heldout_psnr"]
    assert shown["splat"]["heldout_ssim"] == splat["heldout_ssim"] and shown["splat"]["gaussians"] == splat["gaussians"]
    assert mesh["faces"] > 0 and stack.read(status["outputs"]["mesh_glb"])[:4] == b"glTF"
    assert shown["mesh"]["faces"] == mesh["faces"] and shown["mesh"]["vertices"] == mesh["vertices"]
    if capture.max_centre_error_pct is not None:
        pct = _centre_error_pct(json.loads(stack.read(status["outputs"]["transforms"])),
                                DATASETS / capture.name / "cameras.json")
        print(f"{capture.name}: camera centres {pct:.3f} % of the rig radius off the reference")
        assert pct <= capture.max_centre_error_pct


def _centre_error_pct(transforms: dict[str, Any], cameras_json: Path) -> float:
    """The RMSE of the published camera centres (transforms.json, camera-to-world) against the
    set's cameras.json after a similarity alignment, as a percentage of the rig's radius."""
    import numpy as np

    from tests.batch_jobs.pose_accuracy import load_truth, rig_radius, umeyama

    truth = load_truth(cameras_json)
    est = {Path(f["file_path"]).stem: np.asarray(f["transform_matrix"])[:3, 3] for f in transforms["frames"]}
    names = sorted(set(est) & set(truth))
    src = np.stack([est[n] for n in names])
    dst = np.stack([truth[n].center for n in names])
    err = np.linalg.norm(umeyama(src, dst).apply(src) - dst, axis=1)
    return float(100 * np.sqrt(np.mean(err ** 2)) / rig_radius(truth))


def _stage_seconds(st: dict[str, Any]) -> str:
    import datetime as dt

    if not st.get("started_at") or not st.get("finished_at"):
        return "?"
    a, b = (dt.datetime.fromisoformat(st[k].replace("Z", "+00:00")) for k in ("started_at", "finished_at"))
    return f"{(b - a).total_seconds():.0f}"
