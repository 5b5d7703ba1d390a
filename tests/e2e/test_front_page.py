"""The results page in a real headless Chromium (software WebGL: SwiftShader) for a request that
went through the whole local stack: the viewer loads the splat, the canvas is not blank, the
preview and the metrics are shown; the training left its live preview."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import requests
from chromium_cdp import Chromium, chromium_path
from stackclient import StackClient

from splatpipe.client import Client

pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="needs chromium (apt-get install -y chromium)")]

SMALL = {"preset": "preview", "max_frames": 10, "splat_steps": 60}
BACKGROUND = (0, 0, 0)


def canvas_coverage(png: bytes, rect: dict[str, float]) -> tuple[float, float]:
    """(fraction of the canvas's pixels that differ from the background, their value spread)."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    box = (int(rect["x"]) + 2, int(rect["y"]) + 2, int(rect["x"] + rect["width"]) - 2,
           int(rect["y"] + rect["height"]) - 2)
    px = np.asarray(img.crop(box), dtype=np.int16)
    lit = np.abs(px - np.array(BACKGROUND)).sum(axis=2) > 24
    return float(lit.mean()), float(px[lit].std()) if lit.any() else 0.0


def test_results_page_shows_the_splat_and_the_metrics(stack: StackClient, synthetic_video: dict[str, Path],
                                                      tmp_path: Path) -> None:
    req = Client(stack.urls["api"]).submit(synthetic_video["video"], session_id="e2e-page", options=SMALL)
    status = stack.wait([req.request_id], timeout=600)[req.request_id]
    assert status["state"] == "COMPLETED", status.get("error")
    # The training's live preview (rewritten while it ran) is there and the status says when.
    assert status["stages"]["splat"]["live_preview_at"]
    live = requests.get(f"{stack.urls['api']}/requests/{req.request_id}/live-preview",
                        headers={"X-Callback-Token": req.token}, timeout=30)
    assert live.status_code == 200 and live.content[:8] == b"\x89PNG\r\n\x1a\n"

    with Chromium(1400, 950) as browser:
        browser.navigate(f"{stack.urls['api']}/view/{req.request_id}?token={req.token}")
        assert browser.wait_for("document.body.dataset.viewer === 'ready' || "
                                "(document.body.dataset.viewer === 'error' && 'error')", timeout=240) is True, \
            browser.evaluate("document.getElementById('viewer-status').textContent") + str(browser.console())
        if "mesh_glb" in status["outputs"]:
            browser.wait_for("window.splatpipe.mesh", timeout=120)
        browser.wait_for("document.getElementById('preview').complete && "
                         "document.getElementById('preview').naturalWidth > 0", timeout=60)
        png = browser.screenshot()
        rect = browser.evaluate("(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
                                " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")
        metrics = browser.evaluate("Object.fromEntries([...document.querySelectorAll('#metrics tr[data-metric]')]"
                                   ".map(r => [r.dataset.metric, r.cells[1].textContent]))")
        stages = browser.evaluate("[...document.querySelectorAll('#stages tr')].map(r => r.cells[1].firstChild"
                                  ".textContent)")
        splats = browser.evaluate("window.splatpipe.splats")
        state_text = browser.evaluate("document.getElementById('state').textContent")

    (tmp_path / "results-page.png").write_bytes(png)
    if os.environ.get("SPLATPIPE_SCREENSHOT"):  # where to keep it (docs/results-page.png)
        Path(os.environ["SPLATPIPE_SCREENSHOT"]).write_bytes(png)
    coverage, spread = canvas_coverage(png, rect)
    assert rect["width"] > 400 and rect["height"] > 300
    assert coverage > 0.02 and spread > 5, (coverage, spread, tmp_path / "results-page.png")
    assert splats == status["metrics"]["splat"]["gaussians"] > 0
    assert state_text == "COMPLETED" and set(stages) <= {"SUCCEEDED", "SKIPPED"}
    for key in ("sfm.registered_images", "splat.heldout_psnr", "splat.heldout_ssim", "splat.gaussians",
                "splat.seconds"):
        assert key in metrics, (key, sorted(metrics))
    assert metrics["sfm.registered_images"] == str(status["metrics"]["sfm"]["registered_images"])
