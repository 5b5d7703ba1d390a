"""Stage `depth`: Depth-Anything-V2 depth maps, aligned to the SfM scale.

Reads `sfm/images/*.jpg` and `sfm/sparse/0`; writes per registered image `depth/{name}.npy`
(float16, H x W of the sfm image, SfM units, 0 = invalid) and `depth/{name}.png` (a coloured
preview, near = bright, invalid = black), and `depth/report.json` (the alignment of every
image: scale, shift, relative depth errors at the SfM points).

Inference is batched (`batch_size` images, `input_size` pixels on the short side, fp16 on
CUDA). Each prediction is aligned on its own (depth_align): a relative model's output has its
own scale and shift per image. An image that cannot be aligned (too few SfM points, no
consistent fit) gets an all-invalid map and its reason in the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from batch_jobs.depth import align as depth_align
from batch_jobs.depth.model import load_depth_model
from batch_jobs.errors import StageError
from batch_jobs.runner import StageContext
from batch_jobs.sparse_model import SparseModel, SparseView, read_sparse_model

VERSION = 1

MAX_DEPTH_FACTOR = 4.0  # farther than this times the farthest SfM point in view: not trusted
NO_IMAGES = "NO_IMAGES"


def colorize(depth: np.ndarray) -> np.ndarray:
    """BGR uint8 preview: inverse depth through the turbo colour map, invalid pixels black."""
    import cv2

    valid = depth > 0
    out = np.zeros((*depth.shape, 3), np.uint8)
    if not valid.any():
        return out
    inv = np.zeros_like(depth, dtype=np.float32)
    inv[valid] = 1.0 / depth[valid]
    lo, hi = np.percentile(inv[valid], [1, 99])
    norm = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
    colored = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    out[valid] = colored[valid]
    return out


def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise StageError(NO_IMAGES, f"cannot read image {path.name}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def align_view(pred: np.ndarray, model: SparseModel, view: SparseView, space: str) -> tuple[np.ndarray,
                                                                                       depth_align.Alignment]:
    """Align one prediction to the SfM points seen in `view`; (depth map float32, alignment)."""
    xy, pc = model.observed(view)
    z = pc[:, 2]
    h, w = pred.shape
    px = np.clip(np.floor(xy).astype(np.int64), 0, [w - 1, h - 1])
    front = z > 0
    samples = pred[px[front, 1], px[front, 0]]
    alignment = depth_align.fit_scale_shift(samples, z[front], space)
    max_depth = MAX_DEPTH_FACTOR * float(z[front].max()) if front.any() else 0.0
    return depth_align.aligned_depth_map(pred, alignment, max_depth), alignment


def run(ctx: StageContext) -> dict[str, Any]:
    import cv2

    params = ctx.params
    if not params["enabled"]:
        ctx.progress.update(1.0, "depth disabled by the request options")
        ctx.write_report({"enabled": False, "images": {}})
        return {"enabled": False}

    sfm_dir = ctx.input_dir("sfm")
    with ctx.timed("read_model"):
        model = read_sparse_model(sfm_dir / "sparse" / "0")
    views = [v for v in model.views if (sfm_dir / "images" / v.file).exists()]
    if not views:
        raise StageError(NO_IMAGES, "none of the sparse model's images are in sfm/images/")

    ctx.progress.update(0.02, "loading the depth model")
    with ctx.timed("load_model"):
        dm = load_depth_model(str(params["model"]), ctx.device, ctx.work_root)
    space = "depth" if dm.kind == "metric" else "disparity"
    batch_size = max(1, int(params["batch_size"]))
    input_size = int(params["input_size"])

    report: dict[str, Any] = {}
    infer_s = 0.0
    for start in range(0, len(views), batch_size):
        batch = views[start:start + batch_size]
        images = [_read_rgb(sfm_dir / "images" / v.file) for v in batch]
        t0 = time.perf_counter()
        preds = dm.predict(images, input_size)
        infer_s += time.perf_counter() - t0
        with ctx.timed("align_and_write"):
            for view, img, pred in zip(batch, images, preds, strict=True):
                depth, alignment = align_view(pred, model, view, space)
                np.save(ctx.out_dir / f"{view.name}.npy", depth.astype(np.float16))
                cv2.imwrite(str(ctx.out_dir / f"{view.name}.png"), colorize(depth))
                report[view.name] = {**alignment.to_dict(), "valid_fraction": round(float((depth > 0).mean()), 4),
                                     "size": [img.shape[1], img.shape[0]]}
        done = min(len(views), start + batch_size)
        ctx.progress.update(0.05 + 0.95 * done / len(views), f"depth {done}/{len(views)}")
    ctx.timings["inference"] = round(infer_s, 4)

    aligned = [r for r in report.values() if r["ok"]]
    med = [r["median_rel_error"] for r in aligned]
    metrics = {
        "enabled": True,
        "n_images": len(views),
        "n_aligned": len(aligned),
        "median_rel_error": round(float(np.median(med)), 6) if med else None,
        "model": dm.source,
        "model_kind": dm.kind,
        "untrained_model": dm.untrained,
        "device": dm.device,
        "frames_per_s": round(len(views) / infer_s, 3) if infer_s > 0 else None,
    }
    ctx.write_report({**metrics, "input_size": input_size, "batch_size": batch_size, "images": report})
    return metrics

