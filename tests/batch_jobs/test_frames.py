"""Stage `frames` on real media: PyAV videos (rotation), photo folders (EXIF), quality rules, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batch_jobs import runner, storage
from batch_jobs.frames import stage as frames
from batch_jobs.progress import ProgressReporter
from core.batch_task import EXIT_BAD_INPUT, EXIT_OK
from emulator.synthetic_scene import motion_blur, write_video

REPO = Path(__file__).resolve().parents[2]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


def _decode(video: Path, n: int | None = None) -> list[np.ndarray]:
    import av

    out = []
    with av.open(str(video)) as c:
        for f in c.decode(video=0):
            out.append(f.to_ndarray(format="rgb24"))
            if n is not None and len(out) == n:
                break
    return out


def _workspace(tmp: Path, input_path: Path | str, options: dict[str, Any] | None = None) -> Path:
    ws = tmp / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "request.json").write_text(json.dumps({"request_id": "t-frames", "input": str(input_path),
                                                 "options": options or {"preset": "preview"}}))
    return ws


def run_cli(stage: str, ws: Path | str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPLATPIPE_STATUS_STORE": "log"}
    return subprocess.run([sys.executable, "-m", "batch_jobs", "run", stage, "--workspace", str(ws), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _report(ws: Path) -> dict[str, Any]:
    return json.loads((ws / "frames" / "report.json").read_text())


# -- videos -------------------------------------------------------------------------------------
def test_video_keeps_sharpest_per_interval_and_reports_every_frame(synthetic_video: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    ws = _workspace(tmp_path, synthetic_video["video"], {"preset": "preview", "max_frames": 30})
    proc = run_cli("frames", ws)
    assert proc.returncode == EXIT_OK, proc.stderr
    rep = _report(ws)
    assert rep["seen"] == 90 and len(rep["frames"]) == 90
    assert rep["source"]["kind"] == "video" and rep["source"]["frame_count"] == 90
    kept = [f for f in rep["frames"] if f["kept"]]
    assert 25 <= len(kept) <= 30 and rep["kept"] == len(kept)
    files = sorted(p.name for p in (ws / "frames" / "images").iterdir())
    assert files == sorted(f"{f['index']:06d}.jpg" for f in kept) == sorted(rep["images"])
    by_interval: dict[int, list[dict[str, Any]]] = {}
    for f in rep["frames"]:
        assert {"sharpness", "brightness", "dark_fraction", "bright_fraction", "reason", "kept"} <= set(f)
        by_interval.setdefault(f["interval"], []).append(f)
    for group in by_interval.values():
        winners = [f for f in group if f["kept"]]
        if winners:  # the kept frame is the sharpest of its interval, not a fixed stride
            assert winners[0]["sharpness"] == max(f["sharpness"] for f in group)
            assert all(f["reason"] == frames.NOT_SHARPEST for f in group if not f["kept"])
    strides = np.diff([f["index"] for f in kept])
    assert len(set(strides.tolist())) > 1
    import cv2

    img = cv2.imread(str(ws / "frames" / "images" / files[0]))
    assert img.shape == (360, 480, 3)  # under the preview long side: not resized


def test_progress_is_reported_while_decoding(synthetic_video: dict[str, Path], tmp_path: Path) -> None:
    writes: list[dict[str, Any]] = []

    class Sink:
        def write(self, fields: dict[str, Any]) -> None:
            writes.append(fields)

    out = tmp_path / "out"
    out.mkdir()
    ctx = runner.StageContext(stage="frames", workspace=str(tmp_path), request={"input": str(synthetic_video["video"])},
                              options={"preset": "preview"}, params={"target_frames": 20, "min_frames": 6,
                                                                     "long_side": 320},
                              out_dir=out, work_root=tmp_path, progress=ProgressReporter("frames", [Sink()],
                                                                                        min_interval=0.0))
    metrics = frames.run(ctx)
    fractions = [w["progress.frames"] for w in writes if "decoding" in w.get("stages.frames.message", "")]
    assert len(fractions) >= 8 and fractions == sorted(fractions) and 0 < fractions[0] < fractions[-1] <= 0.9
    assert metrics["kept"] <= 20
    import cv2

    assert max(cv2.imread(str(next((out / "images").iterdir()))).shape[:2]) == 320  # resized to long side


def test_rotation_metadata_is_applied(synthetic_video: dict[str, Path], tmp_path: Path) -> None:
    import av
    import cv2

    src = [cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in _decode(synthetic_video["video"], 12)]
    for f in src:
        f[:20, :30] = (255, 0, 0)  # a red mark in the stored top-left corner
    video = tmp_path / "portrait.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        s.set_display_rotation(90)  # counter-clockwise, as a phone held upright records it
        for f in src:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    ws = _workspace(tmp_path, video, {"preset": "preview", "max_frames": 6})
    assert run_cli("frames", ws).returncode == EXIT_OK
    rep = _report(ws)
    assert rep["source"]["rotation"] == 90
    out = cv2.cvtColor(cv2.imread(str(ws / "frames" / "images" / rep["images"][0])), cv2.COLOR_BGR2RGB)
    assert out.shape[:2] == (160, 120)  # portrait
    # Rotating 90 degrees counter-clockwise takes the stored top-left corner to the bottom-left.
    assert out[-15:, :15].mean(axis=(0, 1))[0] > 200 and out[-15:, :15].mean(axis=(0, 1))[2] < 60
    expected = np.rot90(src[int(rep["images"][0][:6])], 1)
    assert np.abs(out.astype(float) - expected).mean() < 6


def test_blurred_badly_exposed_and_duplicate_frames_are_rejected(synthetic_video: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    src = _decode(synthetic_video["video"], 37)
    seq = []
    for i in range(48):  # 12 intervals of 4 frames
        img = src[min(i, 36)]  # frames 36..47 are one frame: the camera stopped
        if i in (4, 5, 7) or 8 <= i <= 11:
            img = motion_blur(img, 21, 30.0)
        elif 12 <= i <= 15:
            img = (img * 0.06).astype(np.uint8)  # underexposed
        elif 20 <= i <= 23:
            img = np.clip(img.astype(np.int32) * 4 + 60, 0, 255).astype(np.uint8)  # overexposed
        seq.append(img)
    video = tmp_path / "shaky.mp4"
    write_video(video, seq, fps=30)
    ws = _workspace(tmp_path, video, {"preset": "preview", "max_frames": 12})
    proc = run_cli("frames", ws)
    assert proc.returncode == EXIT_OK, proc.stderr
    rep = _report(ws)
    f = {x["index"]: x for x in rep["frames"]}
    kept = {x["index"] for x in rep["frames"] if x["kept"]}
    assert 6 in kept and not kept & {4, 5, 7}  # the sharp frame of a shaky interval
    assert not kept & (set(range(8, 16)) | set(range(20, 24)))
    assert kept & set(range(16, 20))  # a normal interval between bad ones
    assert {f[i]["reason"] for i in range(12, 16)} == {"underexposed"}
    assert {f[i]["reason"] for i in range(20, 24)} == {"overexposed"}
    assert "blurred" in {f[i]["reason"] for i in range(8, 12)}
    dups = [x for x in rep["frames"] if x["reason"] == "duplicate"]
    assert len(dups) == 2 and all(x["index"] >= 40 for x in dups)
    assert rep["rejected"]["duplicate"] == 2 and rep["rejected"]["blurred"] >= 1
    assert len(kept) == 7 and all(i < 40 for i in kept)
    assert sorted(p.name for p in (ws / "frames" / "images").iterdir()) == sorted(f"{i:06d}.jpg" for i in kept)


def test_gcs_video_into_a_gcs_workspace(gcs_bucket: str, synthetic_video: dict[str, Path]) -> None:
    video_uri = f"gs://{gcs_bucket}/uploads/s1/scene.mp4"
    storage.upload(synthetic_video["video"], video_uri)
    ws = f"gs://{gcs_bucket}/jobs/r-gcs"
    storage.write_json(f"{ws}/request.json", {"request_id": "r-gcs", "input": video_uri,
                                              "options": {"preset": "preview", "max_frames": 8}})
    res = runner.run_stage("frames", ws)
    assert res.exit_code == EXIT_OK, res.error
    names = storage.list_files(f"{ws}/frames")
    assert "report.json" in names and "_SUCCESS.json" in names
    kept = storage.read_json(f"{ws}/frames/report.json")["images"]
    assert sorted(n for n in names if n.startswith("images/")) == sorted(f"images/{n}" for n in kept)
    assert runner.run_stage("frames", ws).status == "skipped"


# -- photos -------------------------------------------------------------------------------------
def _jpeg_with_exif(path: Path, rgb: np.ndarray, orientation: int = 1, focal_35mm: int | None = None) -> None:
    from PIL import Image

    img = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F], exif[0x0110] = "Splat", "Cam 1"
    if focal_35mm:
        exif.get_ifd(0x8769)[0xA405] = focal_35mm
    img.save(path, quality=95, exif=exif)


def test_photo_folder_names_exif_and_rejections(synthetic_images: dict[str, Path], tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "photos"
    folder.mkdir()
    pngs = sorted(synthetic_images["images"].glob("*.png"))
    rgb = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in pngs]
    for p in pngs[:7]:
        (folder / p.name).write_bytes(p.read_bytes())  # PNGs keep their stems, become JPEG
    _jpeg_with_exif(folder / "IMG_0008.jpg", np.ascontiguousarray(np.rot90(rgb[7], -1)), orientation=8,
                    focal_35mm=28)  # stored sideways; EXIF says turn it back
    _jpeg_with_exif(folder / "IMG_0009.jpg", rgb[8], focal_35mm=28)
    _jpeg_with_exif(folder / "IMG_0010_blur.jpg", motion_blur(rgb[9], 25, 10.0))
    _jpeg_with_exif(folder / "IMG_0011_dark.jpg", (rgb[10] * 0.05).astype(np.uint8))
    _jpeg_with_exif(folder / "IMG_0012_copy.jpg", rgb[8])  # the same view as IMG_0009
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("shot on a tripod")
    (folder / "_UPLOAD_COMPLETE").write_text("")

    ws = _workspace(tmp_path, folder, {"preset": "preview"})
    proc = run_cli("frames", ws)
    assert proc.returncode == EXIT_OK, proc.stderr
    rep = _report(ws)
    reasons = {Path(f["source"]).stem: f["reason"] for f in rep["frames"]}
    assert reasons["IMG_0010_blur"] == "blurred"
    assert reasons["IMG_0011_dark"] == "underexposed"
    assert reasons["IMG_0012_copy"] == "duplicate"
    assert reasons["broken"] == "unreadable"
    assert sorted(rep["source"]["other_files"]) == ["_UPLOAD_COMPLETE", "notes.txt"]
    expected = sorted([f"{p.stem}.jpg" for p in pngs[:7]] + ["IMG_0008.jpg", "IMG_0009.jpg"])
    assert sorted(rep["images"]) == expected
    assert sorted(p.name for p in (ws / "frames" / "images").iterdir()) == expected

    upright = cv2.cvtColor(cv2.imread(str(ws / "frames" / "images" / "IMG_0008.jpg")), cv2.COLOR_BGR2RGB)
    assert upright.shape == rgb[7].shape and np.abs(upright.astype(float) - rgb[7]).mean() < 6
    entry = next(f for f in rep["frames"] if f.get("name") == "IMG_0009")
    assert entry["focal_px"] == pytest.approx(28 / 43.2666 * np.hypot(640, 480), rel=1e-3)


def _dark_surround(rgb: np.ndarray, keep: float, backdrop: int = 0) -> np.ndarray:
    """`rgb` with everything outside a centred ellipse covering `keep` of the frame set to
    `backdrop` (0: black, 255: white)."""
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(keep / np.pi)  # an ellipse of semi-axes r*w, r*h covers pi r^2 of the frame
    inside = ((xx - w / 2) / (r * w)) ** 2 + ((yy - h / 2) / (r * h)) ** 2 <= 1.0
    out = np.full_like(rgb, backdrop)
    out[inside] = rgb[inside]
    return out


def _keeps_every_photo(tmp_path: Path, photos: list[np.ndarray]) -> dict[str, Any]:
    import cv2

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, rgb in enumerate(photos):
        cv2.imwrite(str(folder / f"view_{i:02d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    ws = _workspace(tmp_path, folder, {"preset": "preview"})
    proc = run_cli("frames", ws)
    assert proc.returncode == EXIT_OK, proc.stderr
    rep = _report(ws)
    assert rep["kept"] == rep["seen"] == len(photos), rep["rejected"]
    return rep


@pytest.mark.parametrize("backdrop", [0, 255], ids=["black", "white"])
def test_an_object_on_a_plain_backdrop_keeps_every_photo(synthetic_images: dict[str, Path], tmp_path: Path,
                                                         backdrop: int) -> None:
    """A photo set is what the user chose: mostly-black photos of a lit object are not
    underexposed, mostly-white ones not overexposed."""
    import cv2

    pngs = sorted(synthetic_images["images"].glob("*.png"))
    photos = [_dark_surround(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), keep=0.25, backdrop=backdrop)
              for p in pngs]
    rep = _keeps_every_photo(tmp_path, photos)
    limits = frames.fq.QualityLimits()
    key, limit = (("dark_fraction", limits.max_dark_fraction) if backdrop == 0
                  else ("bright_fraction", limits.max_bright_fraction))
    assert min(f[key] for f in rep["frames"]) > limit  # what the histogram rule rejected
    assert all(f["features"] >= frames.fq.QualityLimits().min_features for f in rep["frames"])


@pytest.mark.skipif(not (SHARED_DATASETS / "kermit").is_dir(), reason="shared datasets absent")
def test_real_photos_on_a_dark_surround_keep_every_photo(tmp_path: Path) -> None:
    """Real photos (a toy on a table) with all but the central quarter blacked out, as a turntable
    capture on a black backdrop looks: every photo is kept and reaches the sfm stage."""
    import cv2

    paths = sorted((SHARED_DATASETS / "kermit" / "images").glob("*.jpg"))
    photos = [_dark_surround(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), keep=0.25) for p in paths]
    rep = _keeps_every_photo(tmp_path, photos)
    assert rep["kept"] == len(paths) == 11


def test_photos_over_the_target_are_chosen_evenly(synthetic_images: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(synthetic_images["images"].glob("*.png")):
        (folder / p.name).write_bytes(p.read_bytes())
    ws = _workspace(tmp_path, folder, {"preset": "preview", "max_frames": 5})
    proc = run_cli("frames", ws)
    assert proc.returncode == EXIT_OK, proc.stderr
    rep = _report(ws)
    kept = [i for i, f in enumerate(rep["frames"]) if f["kept"]]
    assert kept == [0, 3, 6, 8, 11]  # 12 photos: the first, the last and three evenly between
    assert {f["reason"] for f in rep["frames"] if not f["kept"]} == {frames.OVER_TARGET}


# -- bad input ----------------------------------------------------------------------------------
def _expect_error(tmp_path: Path, input_path: Path, code: str, options: dict[str, Any] | None = None) -> str:
    ws = _workspace(tmp_path, input_path, options)
    proc = run_cli("frames", ws)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    err = json.loads((ws / "frames" / "_ERROR.json").read_text())
    assert err["code"] == code and err["retryable"] is False
    assert code in proc.stderr and "Traceback" not in proc.stderr
    return err["message"]


def test_text_file_named_mp4_is_not_a_video(tmp_path: Path) -> None:
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is not a video\n" * 10)
    assert "holiday.mp4" in _expect_error(tmp_path, fake, "NOT_A_VIDEO")


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    import av

    path = tmp_path / "voice.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        for i in range(5):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert "audio" in _expect_error(tmp_path, path, "NO_VIDEO_STREAM")


def test_video_with_no_decodable_frame(synthetic_video: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(synthetic_video["video"].read_bytes())
    at = data.find(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 68:at - 4 + size] = bytes(size - 72)  # the container is intact, the frames are zeros
    path = tmp_path / "zeroed.mp4"
    path.write_bytes(bytes(data))
    _expect_error(tmp_path, path, "NO_DECODABLE_FRAMES")


def test_empty_folder_and_too_few_photos(synthetic_images: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no JPEG or PNG" in _expect_error(tmp_path / "a", empty, "NO_IMAGES")
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(synthetic_images["images"].glob("*.png"))[:4]:
        (few / p.name).write_bytes(p.read_bytes())
    msg = _expect_error(tmp_path / "b", few, "TOO_FEW_FRAMES")
    assert "only 4 usable" in msg and "at least 6" in msg


def test_too_few_usable_frames_in_a_video(synthetic_video: dict[str, Path], tmp_path: Path) -> None:
    src = _decode(synthetic_video["video"], 30)
    seq = [f if i < 4 else (f * 0.04).astype(np.uint8) for i, f in enumerate(src)]  # the lights went out
    video = tmp_path / "dark.mp4"
    write_video(video, seq, fps=30)
    msg = _expect_error(tmp_path, video, "TOO_FEW_FRAMES", {"preset": "preview", "max_frames": 10})
    assert "underexposed" in msg


def test_raw_stream_without_timing_still_caps_the_count(synthetic_video: dict[str, Path], tmp_path: Path) -> None:
    import av
    import cv2

    raw = tmp_path / "camera.h264"  # an elementary stream: no container, no duration, no count
    with av.open(str(raw), "w", format="h264") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 240, 180, "yuv420p"
        for f in _decode(synthetic_video["video"], 45):
            small = cv2.resize(f, (240, 180), interpolation=cv2.INTER_AREA)
            for p in s.encode(av.VideoFrame.from_ndarray(small, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    ws = _workspace(tmp_path, raw, {"preset": "preview", "max_frames": 10})
    proc = run_cli("frames", ws)
    assert proc.returncode == EXIT_OK, proc.stderr
    rep = _report(ws)
    assert rep["seen"] == 45 and rep["source"]["duration_s"] is None
    assert 8 <= rep["kept"] <= 10


# -- long videos --------------------------------------------------------------------------------
def _write_pan_video(path: Path, n: int, width: int = 854, height: int = 480, fps: int = 30) -> None:
    """A detailed texture under a panning camera, encoded frame by frame (never all in memory)."""
    import av
    import cv2

    rng = np.random.default_rng(1)
    texture = cv2.resize(rng.integers(0, 256, (height // 4, width // 2, 3), dtype=np.uint8),
                         (2 * width, height + 64), interpolation=cv2.INTER_CUBIC)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "28", "preset": "ultrafast"}
        for i in range(n):
            x = int((width - 1) * i / max(1, n - 1))
            img = np.ascontiguousarray(texture[32:32 + height, x:x + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _frames_peak_rss_mib(ws: Path) -> float:
    # VmHWM: the peak of this process's own address space (ru_maxrss would start from pytest's).
    code = ("import sys\nfrom batch_jobs.runner import run_stage\n"
            "r = run_stage('frames', sys.argv[1], force=True)\nassert r.exit_code == 0, r.error\n"
            "print(next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM:')) / 1024)")
    proc = subprocess.run([sys.executable, "-c", code, str(ws)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "SPLATPIPE_STATUS_STORE": "log"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_long_video_is_decoded_in_bounded_memory(tmp_path: Path) -> None:
    """Peak memory does not grow with the video's length: 30x the frames, the same peak (holding
    every decoded frame of the long one would take 900 x 854 x 480 x 1.5 bytes = 550 MB)."""
    peaks = {}
    for n in (30, 900):
        video = tmp_path / f"pan-{n}.mp4"
        _write_pan_video(video, n)
        ws = _workspace(tmp_path / f"run-{n}", video, {"preset": "preview", "max_frames": 20})
        peaks[n] = _frames_peak_rss_mib(ws)
        assert _report(ws)["seen"] == n
    assert peaks[900] - peaks[30] < 40, peaks
