"""Depth-Anything-V2 through transformers: find the model, load it, run it in batches.

`DEPTH_MODEL` (folded into the depth stage's parameters by core.stages.resolve, whose
default is core.stages.DEFAULT_DEPTH_MODEL) is a Hugging Face id (loaded through the hub
cache), a local directory, or a `gs://` directory, copied locally first. On CUDA the model
runs in fp16. The relative models predict affine-invariant inverse depth (disparity); the
metric ones predict depth; `DepthModel.kind` says which.

`build_untrained_model` writes a tiny, randomly initialised Depth-Anything model with its image
processor: tests and the local demo use it where no pretrained weights can be downloaded. Its
predictions carry no information about the scene and are labelled untrained wherever used.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch_jobs import storage
from batch_jobs.errors import StageError
from core import stages

log = logging.getLogger("batch_jobs.depth.model")

MODEL_UNAVAILABLE = "DEPTH_MODEL_UNAVAILABLE"
UNTRAINED_MARKER = "splatpipe_untrained.json"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DepthModel:
    model: Any  # DepthAnythingForDepthEstimation
    processor: Any  # its image processor
    device: str
    kind: str  # "relative" (predicts disparity) or "metric" (predicts depth)
    source: str  # what DEPTH_MODEL named
    untrained: bool  # built by build_untrained_model: random weights

    @property
    def dtype(self) -> Any:
        return next(self.model.parameters()).dtype

    def predict(self, images: Sequence[np.ndarray], input_size: int) -> list[np.ndarray]:
        """One float32 map per RGB uint8 image, at the image's own size.

        Images of one size go through the processor and the model together (one batch).
        """
        import torch
        import torch.nn.functional as F

        out: list[np.ndarray | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(img.shape, []).append(i)
        for shape, idx in by_shape.items():
            inputs = self.processor(images=[images[i] for i in idx], return_tensors="pt",
                                    size={"height": input_size, "width": input_size})
            pixels = inputs["pixel_values"].to(self.device, dtype=self.dtype)
            with torch.inference_mode():
                pred = self.model(pixel_values=pixels).predicted_depth  # [B, h, w]
                pred = F.interpolate(pred[:, None].float(), size=shape[:2], mode="bilinear", align_corners=False)
            for j, i in enumerate(idx):
                out[i] = pred[j, 0].cpu().numpy().astype(np.float32)
        return [o for o in out if o is not None]


def resolve_model_source(spec: str, work_dir: Path) -> str:
    """A local directory for `gs://` models (downloaded once), else `spec` itself."""
    spec = (spec or stages.DEFAULT_DEPTH_MODEL).strip()
    if storage.is_gcs(spec):
        dest = work_dir / "depth-model"
        if not (dest / "config.json").exists():
            names = storage.download_tree(spec, dest)
            if "config.json" not in names:
                raise StageError(MODEL_UNAVAILABLE, f"DEPTH_MODEL {spec} holds no config.json "
                                 "(expected a saved transformers model directory)")
        return str(dest)
    if spec.startswith(("/", ".", "~")) or Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        if not (path / "config.json").exists():
            raise StageError(MODEL_UNAVAILABLE, f"DEPTH_MODEL {spec} is not a saved transformers model "
                             "directory (no config.json)")
        return str(path)
    return spec  # a Hugging Face id


def _processor_backend() -> str:
    return "torchvision" if importlib.util.find_spec("torchvision") else "pil"


def load_depth_model(spec: str, device: str, work_dir: Path) -> DepthModel:
    """Load DEPTH_MODEL onto `device` (fp16 on CUDA)."""
    import torch
    from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

    source = resolve_model_source(spec, work_dir)
    dtype = torch.float16 if device == "cuda" else torch.float32
    try:
        model = DepthAnythingForDepthEstimation.from_pretrained(source, dtype=dtype)
        processor = AutoImageProcessor.from_pretrained(source, backend=_processor_backend())
    except OSError as exc:  # the hub unreachable or the id unknown: a later retry may work
        raise StageError(MODEL_UNAVAILABLE, f"cannot load DEPTH_MODEL {spec}: {exc}", retryable=True) from exc
    # Through its torch.nn.Module type: transformers declares `to` with functools.wraps, which type
    # checkers do not bind as a method. The model's own `to` runs all the same, and returns the model.
    module: torch.nn.Module = model
    module.to(device).eval()
    untrained = Path(source, UNTRAINED_MARKER).exists()
    if untrained:
        log.warning("DEPTH_MODEL %s is an untrained (random) model: its depth maps are meaningless", spec)
    return DepthModel(model=model, processor=processor, device=device,
                      kind=str(getattr(model.config, "depth_estimation_type", "relative") or "relative"),
                      source=spec, untrained=untrained)


def build_untrained_model(out_dir: Path, seed: int = 0, hidden_size: int = 32) -> Path:
    """Save a tiny random Depth-Anything model and its image processor to `out_dir`.

    The architecture and the processor settings are those of Depth-Anything-V2 (DINOv2
    backbone, DPT head, 14-pixel patches, aspect-preserving resize to a multiple of 14),
    only much smaller; the weights are random, so the predictions are not depth.
    """
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone = Dinov2Config(hidden_size=hidden_size, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                            image_size=518, patch_size=14, reshape_hidden_states=False)
    backbone.out_indices = [1, 2, 3, 4]  # a property, not a field of the config's __init__
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden_size,
                                 neck_hidden_sizes=[hidden_size // 4, hidden_size // 2, hidden_size, hidden_size],
                                 fusion_hidden_size=hidden_size // 2, head_hidden_size=8,
                                 depth_estimation_type="relative")
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(out_dir)
    DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                      ensure_multiple_of=14, resample=3, do_rescale=True, do_normalize=True,
                      image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_pad=False).save_pretrained(out_dir)
    (out_dir / UNTRAINED_MARKER).write_text(json.dumps(
        {"untrained": True, "seed": seed, "note": "random weights: for tests and offline demos only"}))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """`python -m batch_jobs.depth.model --untrained DIR`: write the tiny random model (offline demos)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m batch_jobs.depth.model")
    ap.add_argument("--untrained", type=Path, required=True, metavar="DIR",
                    help="write a tiny, randomly initialised Depth-Anything model here (not a depth model)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_untrained_model(args.untrained, seed=args.seed))


if __name__ == "__main__":
    main()
