"""What the splat stage's checkpoints cost: size, save and load time, and the training slow-down.

1. Size and time per checkpoint at the `preview` and `standard` presets' largest sizes (their
   `cap_max` Gaussians at their SH degree), with Adam's state filled by one optimiser step, saved
   through the stage's own store (batch_jobs.gaussians.checkpoint) to a local folder, then
   loaded back. On Cloud Storage the upload adds its transfer time (not measured here).
2. The training slow-down: the same CPU training run (the synthetic ground-truth scene of the
   tests) with a checkpoint every `--every` steps and with none, in the same run; the ratio.

    .venv/bin/python bench/checkpoint.py [--steps 300] [--every 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)  # bench/queue.py would shadow the standard library's queue

import torch  # noqa: E402

from batch_jobs.gaussians.checkpoint import CheckpointStore  # noqa: E402
from batch_jobs.gaussians.params import init_params, num_sh_bases  # noqa: E402
from batch_jobs.gaussians.trainer import Checkpointing, TrainConfig, Trainer  # noqa: E402
from core import stages  # noqa: E402


def sizes() -> None:
    splat = stages.stage("splat")
    for preset in ("preview", "standard"):
        p = splat.presets[preset]
        n, degree = int(p["cap_max"]), int(p["sh_degree"])
        trainer_state = _filled_state(_random_params(n, degree))
        with tempfile.TemporaryDirectory() as tmp:
            store = CheckpointStore(tmp, digest="bench")
            saved = store.save(1, trainer_state)
            t0 = time.perf_counter()
            loaded = store.load()
            load_s = time.perf_counter() - t0
        assert loaded is not None
        print(f"{preset:9s} {n:>9,} Gaussians, SH {degree}: checkpoint {saved.bytes / 1e6:8.1f} MB, "
              f"save {saved.seconds:6.2f} s, load {load_s:6.2f} s")


def _random_params(n: int, degree: int) -> torch.nn.ParameterDict:
    """Parameters of `n` Gaussians at SH `degree`, shaped as params.init_params makes them (whose
    nearest-neighbour scale init would need tens of GB at 1.5 million points)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3)}
    if degree > 0:
        shapes["shN"] = (n, num_sh_bases(degree) - 1, 3)
    return torch.nn.ParameterDict({k: torch.nn.Parameter(torch.randn(v, generator=g)) for k, v in shapes.items()})


def _filled_state(params: torch.nn.ParameterDict) -> dict:
    """The parameters and their Adam moments after one step (what a checkpoint holds)."""
    opts = {k: torch.optim.Adam([v], lr=1e-3) for k, v in params.items()}
    loss = sum((v.float() ** 2).sum() for v in params.values())
    loss.backward()
    for o in opts.values():
        o.step()
    return {"params": {k: v.detach() for k, v in params.items()},
            "optimizers": {k: o.state_dict() for k, o in opts.items()}}


def slowdown(steps: int, every: int) -> None:
    sys.path.insert(0, str(REPO / "tests" / "batch_jobs"))
    from workspace_fixture import SMALL, cached_gt_workspace

    from batch_jobs.gaussians.camera import load_views
    from batch_jobs.sparse_model import read_sparse_model

    gt = cached_gt_workspace(SMALL)
    model = read_sparse_model(gt.workspace / "sfm" / "sparse" / "0")
    views = load_views(model, gt.workspace / "sfm" / "images", 240)
    times: dict[str, list[float]] = {}
    saves: list = []
    for label in ("none", "every", "none", "every"):  # interleaved: both see the same machine
        torch.manual_seed(0)
        params = init_params(model.points, model.colors, sh_degree=1, seed=0)
        trainer = Trainer(params, views, TrainConfig(steps=steps, sh_degree=1, strategy="default", depth_loss=False, seed=0, opacity_reset=False, cap_max=40_000),
                          model.scene_extent()[1])
        with tempfile.TemporaryDirectory() as tmp:
            store = CheckpointStore(tmp, digest="bench")
            ck = Checkpointing(every, 1e9, lambda step, state, st=store: saves.append(st.save(step, state))) \
                if label == "every" else None
            t0 = time.perf_counter()
            trainer.run(checkpointing=ck)
            times.setdefault(label, []).append(time.perf_counter() - t0)
    a, b = min(times["none"]), min(times["every"])
    print(f"training {steps} steps on {len(views)} views at 240 px: no checkpoints {a:.1f} s, a checkpoint every "
          f"{every} steps {b:.1f} s: ratio {b / a:.3f} (best of 2 each); {len(saves)} saves of "
          f"{saves[-1].bytes / 1e6:.1f} MB took {sum(x.seconds for x in saves) / len(saves):.3f} s each")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    args = ap.parse_args()
    sizes()
    slowdown(args.steps, args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
