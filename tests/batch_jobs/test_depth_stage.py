"""The depth stage: model loading (local dir, gs:// dir, bad names), batched inference, outputs.

No pretrained weights are reachable here: the model is the tiny random Depth-Anything built by
`build_untrained_model`, loaded through the real loading code. Its depth maps carry no scene
information, so these tests check the stage's contract, not depth quality (the alignment maths
is tested on true depths in test_depth_align.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from workspace_fixture import SMALL, GTWorkspace, small_gt_workspace  # noqa: F401 (fixture)

from batch_jobs import runner, storage
from batch_jobs.depth.model import MODEL_UNAVAILABLE, build_untrained_model, load_depth_model
from batch_jobs.errors import StageError
from core.batch_task import EXIT_BAD_INPUT


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_untrained_model(tmp_path_factory.mktemp("depth-model") / "tiny")


def test_tiny_model_loads_and_predicts_in_batches(tiny_model: Path, tmp_path: Path) -> None:
    dm = load_depth_model(str(tiny_model), "cpu", tmp_path)
    assert dm.kind == "relative" and dm.untrained and dm.device == "cpu"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (90, 120, 3), dtype=np.uint8) for _ in range(3)]
    images.append(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))  # another size: its own batch
    preds = dm.predict(images, input_size=112)
    assert [p.shape for p in preds] == [(90, 120)] * 3 + [(64, 48)]
    assert all(p.dtype == np.float32 and np.isfinite(p).all() for p in preds)


def test_model_from_a_gcs_directory(tiny_model: Path, gcs_bucket: str, tmp_path: Path) -> None:
    uri = f"gs://{gcs_bucket}/models/tiny"
    storage.upload_tree(tiny_model, uri)
    dm = load_depth_model(uri, "cpu", tmp_path)
    assert dm.untrained and (tmp_path / "depth-model" / "config.json").exists()


def test_bad_model_names_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StageError) as err:
        load_depth_model(str(tmp_path / "nope"), "cpu", tmp_path)
    assert err.value.code == MODEL_UNAVAILABLE and not err.value.retryable
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match=r"no config\.json"):
        load_depth_model(str(tmp_path / "empty"), "cpu", tmp_path)


def test_depth_stage_outputs(small_gt_workspace: GTWorkspace, tiny_model: Path,  # noqa: F811
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTH_MODEL", str(tiny_model))
    ws = small_gt_workspace.workspace
    res = runner.run_stage("depth", str(ws))
    assert res.status == "succeeded", res.error
    out = ws / "depth"
    names = small_gt_workspace.names
    report = json.loads((out / "report.json").read_text())
    assert set(report["images"]) == set(names)
    for name in names:
        d = np.load(out / f"{name}.npy")
        assert d.dtype == np.float16 and d.shape == (SMALL.height, SMALL.width)
        assert (d >= 0).all() and np.isfinite(d).all()
        assert (out / f"{name}.png").stat().st_size > 0
        r = report["images"][name]
        assert {"scale", "shift", "n_points", "median_rel_error", "inlier_fraction", "ok"} <= set(r)
        assert r["n_points"] > 100  # the SfM points seen in that image
    metrics = res.success["metrics"]
    assert metrics["n_images"] == len(names) and metrics["untrained_model"] is True
    assert res.success["params"]["model"] == str(tiny_model)
    # Same inputs and options: skipped; another model: runs again.
    assert runner.run_stage("depth", str(ws)).status == "skipped"
    monkeypatch.setenv("DEPTH_MODEL", str(build_untrained_model(ws.parent / "other-model", seed=1)))
    assert runner.run_stage("depth", str(ws)).status == "succeeded"


def test_depth_disabled_writes_only_a_report(small_gt_workspace: GTWorkspace) -> None:  # noqa: F811
    res = runner.run_stage("depth", str(small_gt_workspace.workspace), options={"depth": False})
    assert res.status == "succeeded" and res.success["metrics"] == {"enabled": False}
    files = sorted(p.name for p in (small_gt_workspace.workspace / "depth").iterdir())
    assert files == ["_SUCCESS.json", "report.json"]


def test_depth_stage_without_sfm_is_bad_input(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "request.json").write_text(json.dumps({"input": str(tmp_path), "options": {"preset": "preview"}}))
    res = runner.run_stage("depth", str(ws))
    assert res.exit_code == EXIT_BAD_INPUT and res.error["code"] == "MISSING_INPUT"
