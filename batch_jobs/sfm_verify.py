"""Verification of a camera solution against the evidence it was made from, without ground truth.

A mapper can return a model that registers every image at a sub-pixel reprojection error and is
still wrong: cameras that settled into a false minimum (repeated texture, little parallax) keep
a few self-consistent tracks and drop the rest. The evidence that contradicts them is still in
the database: the verified matches of every image pair. For each verified pair whose two images
are registered, the relative pose is re-estimated from the pair's inlier matches alone (LO-RANSAC
on the essential matrix, with the model's own intrinsics) and compared with the model's relative
rotation R2 R1^T. A correct model agrees with nearly every pair; a wrong camera disagrees with
most of its pairs.

Figures (all in `sfm/report.json` under `verification`, scalars also as the stage's `verify_*`
metrics):

- per pair: the rotation disagreement in degrees, and the share of its inlier matches that the
  model explains (both keypoints observe the same 3D point);
- the share of the judged pairs' inlier matches that lie in pairs disagreeing by more than
  `max_rotation_deg` (the headline figure; pairs weigh by their evidence), and the plain share
  of pairs;
- per image: registered observations, verified pairs, pairs that disagree (and their share of
  its inlier matches); an image whose pairs mostly disagree is *suspect* and is named;
- tracks: mean length, mean and 95th-percentile reprojection error.

Pairs with fewer than `min_pair_inliers` inlier matches are not judged (their two-view pose is
itself unreliable), nor pairs whose relative pose cannot be estimated (a pure rotation has no
essential matrix): both are counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
# The thresholds, from measurements (see README "SfM verification"): correct solves of the real
# and ground-truth sets disagree with their pairs by well under a degree (worst pair: a few
# degrees, on weak, narrow-baseline pairs); a camera displaced into a wrong minimum disagrees
# with its pairs by tens of degrees.
MAX_ROTATION_DEG = 5.0  # a pair disagrees beyond this
MAX_DISAGREE_FRACTION = 0.10  # of the judged pairs' inlier matches
# An image whose judged pairs disagree more often than this. Counted, not weighed: a correct
# camera's strongest pair is often with its broken neighbour.
SUSPECT_IMAGE_FRACTION = 0.5
MIN_PAIR_INLIERS = 30
MIN_IMAGE_OBSERVATIONS = 30  # a registered image explains at least this many keypoints
MAX_REPROJECTION_PX = 2.0
RANSAC_MAX_ERROR_PX = 4.0
MAX_MATCHES_PER_PAIR = 2000  # a random subset: the pose is as good, the cost bounded
RANSAC_MIN_TRIALS = 50


@dataclass(frozen=True)
class Thresholds:
    max_rotation_deg: float = MAX_ROTATION_DEG
    max_disagree_fraction: float = MAX_DISAGREE_FRACTION
    suspect_image_fraction: float = SUSPECT_IMAGE_FRACTION
    min_pair_inliers: int = MIN_PAIR_INLIERS
    min_image_observations: int = MIN_IMAGE_OBSERVATIONS
    max_reprojection_px: float = MAX_REPROJECTION_PX


@dataclass
class PairCheck:
    image1: str
    image2: str
    inliers: int
    rotation_error_deg: float | None  # None: not judged
    explained: float  # share of the inlier matches the model triangulated into one point

    def to_dict(self) -> dict[str, Any]:
        return {"images": [self.image1, self.image2], "inliers": self.inliers,
                "rotation_error_deg": None if self.rotation_error_deg is None else round(self.rotation_error_deg, 3),
                "explained": round(self.explained, 4)}


@dataclass
class Verification:
    passed: bool
    problems: list[str]
    figures: dict[str, float | int]
    suspect_images: list[str]
    per_image: dict[str, dict[str, Any]]
    thresholds: Thresholds
    worst_pairs: list[PairCheck] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """Top-level scalar figures for the stage's metrics, prefixed `verify_`."""
        return {"verify_passed": self.passed, **{f"verify_{k}": v for k, v in self.figures.items()}}

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "problems": self.problems, "figures": self.figures,
                "suspect_images": self.suspect_images, "thresholds": asdict(self.thresholds),
                "per_image": self.per_image, "worst_pairs": [p.to_dict() for p in self.worst_pairs]}

    def summary(self) -> str:
        f = self.figures
        return (f"{f['pairs_disagreeing']} of {f['pairs_judged']} image pairs disagree with the model by "
                f"more than {self.thresholds.max_rotation_deg:g} deg (median {f['rotation_error_median_deg']:.2f}, "
                f"p95 {f['rotation_error_p95_deg']:.2f} deg)")


def _rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    c = (np.trace(Ra @ Rb.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _point_ids(image: Any) -> np.ndarray:
    """The 3D point id of each keypoint of a registered image, -1 where none."""
    return np.array([int(p.point3D_id) if p.has_point3D() else -1 for p in image.points2D], np.int64)


def verify(database: Path, model: Any, thresholds: Thresholds | None = None) -> Verification:
    """Check `model` (a pycolmap.Reconstruction made from `database`) against its verified pairs."""
    import pycolmap

    th = thresholds or Thresholds()
    rng = np.random.default_rng(SEED)
    ransac = pycolmap.RANSACOptions()
    ransac.random_seed = SEED
    ransac.max_error = RANSAC_MAX_ERROR_PX
    ransac.min_num_trials = RANSAC_MIN_TRIALS  # the matches are verified inliers already: few trials suffice

    registered = {im.image_id: im for im in model.images.values() if im.has_pose}
    point_ids = {iid: _point_ids(im) for iid, im in registered.items()}
    rotations = {iid: np.asarray(im.cam_from_world().rotation.matrix(), np.float64) for iid, im in registered.items()}

    db = pycolmap.Database.open(str(database))
    try:
        names = {im.image_id: im.name for im in db.read_all_images()}
        pair_ids, geometries = db.read_two_view_geometries()
        keypoints: dict[int, np.ndarray] = {}

        def kp(iid: int) -> np.ndarray:
            if iid not in keypoints:
                keypoints[iid] = np.asarray(db.read_keypoints(iid), np.float64)[:, :2]
            return keypoints[iid]

        checks: list[PairCheck] = []
        weak = unregistered = no_pose = 0
        for pid, tvg in zip(pair_ids, geometries, strict=True):
            matches = np.asarray(tvg.inlier_matches)
            if len(matches) == 0:
                continue
            a, b = (int(x) for x in pycolmap.pair_id_to_image_pair(pid))
            if a not in registered or b not in registered:
                unregistered += 1
                continue
            ids_a, ids_b = point_ids[a][matches[:, 0]], point_ids[b][matches[:, 1]]
            explained = float(np.mean((ids_a >= 0) & (ids_a == ids_b)))
            check = PairCheck(names[a], names[b], len(matches), None, explained)
            checks.append(check)
            if len(matches) < th.min_pair_inliers:
                weak += 1
                continue
            if len(matches) > MAX_MATCHES_PER_PAIR:
                matches = matches[rng.choice(len(matches), MAX_MATCHES_PER_PAIR, replace=False)]
            est = pycolmap.estimate_relative_pose(model.cameras[registered[a].camera_id], kp(a)[matches[:, 0]],
                                                  model.cameras[registered[b].camera_id], kp(b)[matches[:, 1]],
                                                  ransac)
            if not est or est["num_inliers"] < th.min_pair_inliers:
                no_pose += 1
                continue
            cam_a, cam_b = model.cameras[registered[a].camera_id], model.cameras[registered[b].camera_id]
            # LO-RANSAC leaves the pose unrefined over its inliers: refined, weak pairs stop scattering.
            refined = pycolmap.refine_relative_pose(est["cam2_from_cam1"], cam_a, kp(a)[matches[:, 0]],
                                                    cam_b, kp(b)[matches[:, 1]],
                                                    np.asarray(est["inlier_mask"], bool))
            rel_two_view = refined["cam2_from_cam1"] if isinstance(refined, dict) else refined
            rel_model = rotations[b] @ rotations[a].T
            check.rotation_error_deg = _rotation_angle_deg(np.asarray(rel_two_view.rotation.matrix()), rel_model)
    finally:
        db.close()

    judged = [c for c in checks if c.rotation_error_deg is not None]
    errs = np.array([c.rotation_error_deg for c in judged]) if judged else np.zeros(0)
    bad = errs > th.max_rotation_deg
    # Pairs weigh by their inlier matches: a weak pair's own pose is noisy (measured: wide-baseline
    # pairs of 40 inliers off by 5-7 deg under a correct model), a broken camera loses its strong
    # pairs as well as its weak ones.
    weights = np.array([c.inliers for c in judged], np.float64)

    per_image: dict[str, dict[str, Any]] = {}
    for iid, im in sorted(registered.items(), key=lambda kv: kv[1].name):
        per_image[im.name] = {"observations": int((point_ids[iid] >= 0).sum()), "pairs": 0, "judged": 0,
                              "disagreeing": 0, "disagreeing_inliers": 0.0, "judged_inliers": 0.0,
                              "explained": [], "rotation_error_median_deg": []}
    for c, is_bad in zip(judged, bad, strict=True):
        for n in (c.image1, c.image2):
            per_image[n]["judged"] += 1
            per_image[n]["disagreeing"] += int(is_bad)
            per_image[n]["judged_inliers"] += c.inliers
            per_image[n]["disagreeing_inliers"] += c.inliers * int(is_bad)
            per_image[n]["rotation_error_median_deg"].append(c.rotation_error_deg)
    for c in checks:
        for n in (c.image1, c.image2):
            per_image[n]["pairs"] += 1
            per_image[n]["explained"].append(c.explained)
    for d in per_image.values():
        d["explained"] = round(float(np.median(d["explained"])), 4) if d["explained"] else 0.0
        r = d["rotation_error_median_deg"]
        d["rotation_error_median_deg"] = round(float(np.median(r)), 4) if r else None
        d["disagree_fraction"] = round(d.pop("disagreeing_inliers") / d["judged_inliers"], 4) if r else 0.0
        d.pop("judged_inliers")
    suspects = sorted(n for n, d in per_image.items()
                      if d["judged"] and d["disagreeing"] / d["judged"] > th.suspect_image_fraction)
    unsupported = sorted(n for n, d in per_image.items()
                         if d["judged"] == 0 or d["observations"] < th.min_image_observations)

    track_lengths = np.array([p.track.length() for p in model.points3D.values()], np.float64)
    point_errors = np.array([p.error for p in model.points3D.values()], np.float64)
    fraction = float(weights[bad].sum() / weights.sum()) if judged else 1.0
    obs = [d["observations"] for d in per_image.values()]
    figures: dict[str, float | int] = {
        "pairs": len(checks), "pairs_judged": len(judged), "pairs_weak": weak, "pairs_no_pose": no_pose,
        "pairs_unregistered": unregistered, "pairs_disagreeing": int(bad.sum()),
        "disagree_fraction": round(fraction, 4),  # of the judged pairs' inlier matches
        "pairs_disagree_fraction": round(float(bad.mean()), 4) if judged else 1.0,
        "rotation_error_median_deg": round(float(np.median(errs)), 4) if judged else 0.0,
        "rotation_error_p95_deg": round(float(np.percentile(errs, 95)), 4) if judged else 0.0,
        "rotation_error_max_deg": round(float(errs.max()), 4) if judged else 0.0,
        "image_rotation_error_max_deg": round(max((d["rotation_error_median_deg"] or 0.0
                                                   for d in per_image.values()), default=0.0), 4),
        "explained_median": round(float(np.median([c.explained for c in checks])), 4) if checks else 0.0,
        "suspect_images": len(suspects), "unsupported_images": len(unsupported),
        "min_image_observations": int(min(obs)) if obs else 0,
        "median_image_observations": int(np.median(obs)) if obs else 0,
        "track_length_mean": round(float(track_lengths.mean()), 3) if track_lengths.size else 0.0,
        "reprojection_error_mean_px": round(float(point_errors.mean()), 4) if point_errors.size else 0.0,
        "reprojection_error_p95_px": round(float(np.percentile(point_errors, 95)), 4) if point_errors.size else 0.0,
    }
    problems = []
    if not judged:
        problems.append("no image pair could be judged")
    elif fraction > th.max_disagree_fraction:
        problems.append(f"{int(bad.sum())} of {len(judged)} image pairs, {100 * fraction:.1f} % of their inlier "
                        f"matches, disagree with the model by more than {th.max_rotation_deg:g} deg")
    if suspects:
        problems.append(f"cameras contradicted by most of their image pairs: {', '.join(suspects)}")
    if unsupported:
        problems.append(f"cameras with too little support (no judged pair or fewer than "
                        f"{th.min_image_observations} observations): {', '.join(unsupported)}")
    if figures["reprojection_error_mean_px"] > th.max_reprojection_px:
        problems.append(f"mean reprojection error {figures['reprojection_error_mean_px']:.2f} px")
    worst = sorted(judged, key=lambda c: -c.rotation_error_deg)[:10]
    return Verification(not problems, problems, figures, suspects, per_image, th, worst)
