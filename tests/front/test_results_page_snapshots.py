"""The results page in a real headless Chromium (software WebGL: SwiftShader) while a request's
splat trains: two snapshots are published one after the other, and the viewer loads each in turn
(the second replacing the first, its step shown), then swaps in the final splat when the request
completes.

Real parts only: the `api` function on a real HTTP server (its status, its snapshot route, its
page), a real Redis queue driven through the `queue` function's routes as the workflow drives it,
the real storage and Firestore emulators, and the splat stage's own writers for each checkpoint
(tests/front/splat_snapshots.py: our SPZ writer, batch_jobs.storage, the progress reporter's
Firestore sink)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from fn_testlib import Buckets, FnApps, post_json, put_json
from splat_snapshots import publish_snapshot, small_spz

from core import gcs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from chromium_cdp import Chromium, chromium_path

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="needs chromium (apt-get install -y chromium)")

PAGE = "window.splatpipe"


def lit_fraction(png: bytes, rect: dict[str, float]) -> float:
    """The fraction of the canvas's pixels that are not the black background."""
    import numpy as np
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    box = (int(rect["x"]) + 2, int(rect["y"]) + 2, int(rect["x"] + rect["width"]) - 2,
           int(rect["y"] + rect["height"]) - 2)
    px = np.asarray(img.crop(box), dtype=np.int16)
    return float((px.sum(axis=2) > 24).mean())


def _canvas(browser: Chromium) -> float:
    browser.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    rect = browser.evaluate("(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
                            " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()")
    return lit_fraction(browser.screenshot(), rect)


@pytest.mark.slow
def test_the_viewer_shows_each_new_snapshot_then_the_final_splat(api_url: str, fn_apps: FnApps, buckets: Buckets,
                                                                 firestore_host: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    made = post_json(fn_apps.api, "/trigger-reconstruction",
                     {"session_id": "page-live", "input": f"gs://{buckets.uploads}/page-live/v.mp4"}).get_json()
    rid, token = made["request_id"], made["callback_token"]
    assert fn_apps.queue.get("/next").get_json()["request_id"] == rid  # dispatch hands it out
    for stage in ("frames", "sfm"):
        put_json(fn_apps.queue, f"/status/{rid}", {"stage": stage, "stage_state": "SUCCEEDED"})
    put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "RUNNING"})
    ws = f"gs://{buckets.data}/jobs/{rid}"
    snapshots = [(500, 1500, small_spz(1500, seed=5)), (1000, 3000, small_spz(3000, seed=10, radius=1.5))]
    assert snapshots[0][2] != snapshots[1][2]

    with Chromium(1200, 800) as browser:
        browser.navigate(f"{api_url}/view/{rid}?token={token}")
        browser.wait_for(f"{PAGE} && {PAGE}.status && {PAGE}.status.stages.splat.state === 'RUNNING'", timeout=60)
        assert browser.evaluate(f"{PAGE}.latestSplats") == 0

        seen = []
        for i, (step, n, data) in enumerate(snapshots, start=1):
            publish_snapshot(ws, rid, step, data)
            browser.wait_for(f"{PAGE}.latestSplats === {i} && {PAGE}.latestSplatStep === {step} && "
                             f"{PAGE}.splats === {n} && {PAGE}.shown === 'latest'", timeout=120)
            note = browser.evaluate("document.getElementById('viewer-note').textContent")
            assert f"step {step:,}" in note and f"{n:,} Gaussians" in note, note
            assert browser.evaluate("document.body.dataset.viewer") == "snapshot"
            seen.append(_canvas(browser))
        assert all(f > 0.01 for f in seen), seen  # each snapshot is drawn, not just decoded

        # The final splat replaces the last snapshot when the request completes.
        final = small_spz(4500, seed=20)
        gcs.client("splatpipe-local").bucket(buckets.data).blob(f"jobs/{rid}/splat/scene.spz").upload_from_string(final)
        put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "SUCCEEDED"})
        put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED",
                                                   "outputs": {"splat_spz": f"{ws}/splat/scene.spz"}})
        assert browser.wait_for(f"(document.body.dataset.viewer === 'ready' && {PAGE}.shown === 'final') || "
                                "(document.body.dataset.viewer === 'error' && 'error')", timeout=120) is True, \
            browser.evaluate("document.getElementById('viewer-status').textContent") + str(browser.console())
        assert browser.evaluate(f"{PAGE}.splats") == 4500
        assert browser.evaluate(f"{PAGE}.latestSplats") == 2  # an unchanged step is never loaded again
        assert "step" not in browser.evaluate("document.getElementById('viewer-note').textContent")
        assert _canvas(browser) > 0.01


def test_a_request_that_failed_while_training_shows_its_last_snapshot(api_url: str, fn_apps: FnApps,
                                                                      buckets: Buckets, firestore_host: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No outputs, but a snapshot: the page opened after the failure shows it and says so (the
    status's `outputs.splat_latest` is not taken for an output to download)."""
    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    made = post_json(fn_apps.api, "/trigger-reconstruction",
                     {"session_id": "page-failed", "input": f"gs://{buckets.uploads}/page-failed/v.mp4"}).get_json()
    rid, token = made["request_id"], made["callback_token"]
    assert fn_apps.queue.get("/next").get_json()["request_id"] == rid
    put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "RUNNING", "machine": {
        "machineType": "g2-standard-8", "provisioningModel": "SPOT", "accelerators": [{"type": "nvidia-l4", "count": 1}]}})
    publish_snapshot(f"gs://{buckets.data}/jobs/{rid}", rid, 700, small_spz(800, seed=7))
    put_json(fn_apps.queue, f"/status/{rid}", {"state": "FAILED", "stage": "splat", "stage_state": "FAILED",
                                               "error": {"code": "stage_timeout", "message": "too slow"}})
    st = fn_apps.api.get(f"/status/{rid}", headers={"X-Callback-Token": token}).get_json()
    assert list(st["outputs"]) == ["splat_latest"]

    with Chromium(1200, 800) as browser:
        browser.navigate(f"{api_url}/view/{rid}?token={token}")
        assert browser.wait_for("document.body.dataset.viewer === 'snapshot' || "
                                "(['none', 'error'].includes(document.body.dataset.viewer) && 'other')",
                                timeout=120) is True, browser.console()
        assert browser.evaluate(f"[{PAGE}.latestSplats, {PAGE}.latestSplatStep, {PAGE}.splats]") == [1, 700, 800]
        note = browser.evaluate("document.getElementById('viewer-note').textContent")
        assert "FAILED" in note and "step 700" in note, note
        assert _canvas(browser) > 0.01
        # The failed stage's Spot L4 minute is priced among the figures (the status's `cost`).
        minute = f"${st['cost']['stages']['splat']['usd']:.4f}"
        row = "(k) => (document.querySelector(`#metrics tr[data-metric='${k}']`) || {}).textContent"
        assert browser.evaluate(f"({row})('cost.splat')") == f"splat cost (est.){minute}"
        assert browser.evaluate(f"({row})('cost.total')").endswith(minute)
