"""The SDK and the CLI against the `api` function on a real HTTP server, a real Redis and the real
storage emulator: local files go up through `POST /uploads` (resumable, chunked), the request is
made on the uploaded prefix, and every other command reaches its route."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fn_testlib import Buckets, FnApps, put_json

from core import gcs
from core.pricing import PRICES
from emulator.stack import STATE_FILE, StackInfo
from splatpipe import cli
from splatpipe.client import CHUNK_BYTES, Client, SplatpipeError


def _photos(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img{i:02d}.jpg"
        p.write_bytes(b"\xff\xd8\xff" + bytes([i]) * (1000 + i))
        out.append(p)
    (folder / "notes.txt").write_text("not a photo")
    return out


def _blob_bytes(bucket: str, uri: str) -> bytes:
    return bytes(gcs.client("splatpipe-local").bucket(bucket).blob(uri.split("/", 3)[3]).download_as_bytes())


def test_submit_a_photo_folder_uploads_through_the_api(api_url: str, buckets: Buckets, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "capture")
    client = Client(api_url)
    req = client.submit(tmp_path / "capture", preset="preview", options={"max_frames": 8}, priority=3)
    st = req.status()
    assert st["state"] == "QUEUED" and st["priority"] == 3
    assert st["options"] == {"preset": "preview", "max_frames": 8}
    assert st["session_id"].startswith("capture-")
    prefix = f"gs://{buckets.uploads}/{st['session_id']}/_api/uploads/"
    assert st["input"].startswith(prefix) and st["input"].endswith("/")
    uploaded = {b.name.rsplit("/", 1)[-1]: b for b in
                gcs.client("splatpipe-local").list_blobs(buckets.uploads, prefix=st["input"].split("/", 3)[3])}
    assert sorted(uploaded) == [p.name for p in photos]  # photos only, not notes.txt
    for p in photos:
        assert uploaded[p.name].download_as_bytes() == p.read_bytes()
        assert uploaded[p.name].content_type == "image/jpeg"
    assert [r["request_id"] for r in client.list(st["session_id"], req.token)] == [req.request_id]


def test_a_video_larger_than_one_chunk_arrives_whole(api_url: str, buckets: Buckets, tmp_path: Path) -> None:
    video = tmp_path / "walk.mp4"
    data = os.urandom(CHUNK_BYTES + 12345)
    video.write_bytes(data)
    req = Client(api_url).submit(video, session_id="front-video")
    st = req.status()
    assert st["input"].endswith("/walk.mp4")
    assert _blob_bytes(buckets.uploads, st["input"]) == data


def test_sdk_lifecycle_follow_cancel_restart_download_delete(api_url: str, fn_apps: FnApps, buckets: Buckets,
                                                             tmp_path: Path) -> None:
    client = Client(api_url)
    req = client.submit(f"gs://{buckets.uploads}/front-sdk/v.mp4", session_id="front-sdk")
    assert req.cancel()["state"] == "CANCELLED"
    with pytest.raises(SplatpipeError) as err:
        req.cancel()
    assert err.value.status == 409 and err.value.code == "wrong_state"
    snaps = list(req.follow(interval=0.05))
    assert [s["state"] for s in snaps] == ["CANCELLED"]

    assert req.restart(options={"preset": "preview"})["state"] == "QUEUED"
    rid = req.request_id
    assert fn_apps.queue.get("/next").get_json()["request_id"] == rid
    ws = f"jobs/{rid}"
    bucket = gcs.client("splatpipe-local").bucket(buckets.data)
    bucket.blob(f"{ws}/splat/preview.png").upload_from_string(b"\x89PNG\r\n\x1a\n" + bytes(10))
    bucket.blob(f"{ws}/mesh/mesh.glb").upload_from_string(b"glTF" + bytes(20))
    put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED", "outputs": {
        "preview": f"gs://{buckets.data}/{ws}/splat/preview.png", "mesh_glb": f"gs://{buckets.data}/{ws}/mesh/mesh.glb"}})
    files = req.download(tmp_path / "out")
    assert sorted(str(f.relative_to(tmp_path / "out")) for f in files) == ["mesh/mesh.glb", "splat/preview.png"]
    assert (tmp_path / "out" / "mesh" / "mesh.glb").read_bytes() == b"glTF" + bytes(20)
    assert req.delete()["state"] == "DELETED"
    assert req.status()["state"] == "DELETED"
    with pytest.raises(SplatpipeError) as err:
        client.status("0" * 32, req.token)
    assert err.value.status == 404
    assert {o["name"] for o in client.options()["options"]} >= {"preset", "splat_steps"}


@pytest.fixture
def local_stack_env(api_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What a running local stack leaves for its clients: stack.json naming the api's URL (and
    processes that are alive), found through SPLATPIPE_STACK_DIR; the CLI's token store in tmp."""
    stack_dir = tmp_path / "stack"
    stack_dir.mkdir()
    info = StackInfo(stack_dir, {"api": api_url}, {}, {"api": os.getpid()}, "", False)
    (stack_dir / STATE_FILE).write_text(json.dumps(info.to_json()))
    monkeypatch.setenv("SPLATPIPE_STACK_DIR", str(stack_dir))
    monkeypatch.setenv("SPLATPIPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_commands_through_the_local_stack(local_stack_env: Path, buckets: Buckets, fn_apps: FnApps,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _photos(tmp_path / "photos", 2)
    code, out, _ = _run(capsys, "submit", str(tmp_path / "photos"), "--preset", "preview", "--option",
                        "splat_steps=40", "--option", "depth=false", "--priority", "2")
    assert code == 0, out
    rid = out.split()[1]
    store: dict[str, Any] = json.loads((local_stack_env / "requests.json").read_text())
    assert set(store) == {rid} and (local_stack_env / "requests.json").stat().st_mode & 0o777 == 0o600

    code, out, _ = _run(capsys, "status", rid)
    st = json.loads(out)
    assert code == 0 and st["options"] == {"preset": "preview", "splat_steps": 40, "depth": False}
    assert st["priority"] == 2

    code, out, _ = _run(capsys, "list")
    assert code == 0 and rid in out and "QUEUED" in out
    code, out, _ = _run(capsys, "options")
    assert code == 0 and "splat_steps" in out and "presets: preview, standard, high" in out

    code, out, _ = _run(capsys, "cancel", rid)
    assert code == 0 and json.loads(out)["state"] == "CANCELLED"
    code, _, err = _run(capsys, "cancel", rid)
    assert code == 1 and "CANCELLED" in err and "HTTP 409" in err
    code, _, err = _run(capsys, "restart", rid, "--from-stage", "nope")
    assert code == 1 and "from_stage" in err and "HTTP 422" in err
    code, out, _ = _run(capsys, "restart", rid, "--from-stage", "sfm")
    assert code == 0 and "QUEUED" in out
    code, _, err = _run(capsys, "status", "f" * 32)
    assert code == 1 and "no callback token" in err
    code, out, _ = _run(capsys, "delete", rid)
    assert code == 0 and json.loads(out)["state"] == "DELETED"


def test_a_local_submit_without_a_preset_asks_for_the_cpu_one(local_stack_env: Path, buckets: Buckets,
                                                             fn_apps: FnApps, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The service's default preset is sized for a GPU; on the local stack the CLI says it picks
    preview, and a preset given by flag or by --option is sent as given."""
    _photos(tmp_path / "photos", 2)
    code, out, err = _run(capsys, "submit", str(tmp_path / "photos"))
    assert code == 0 and f"preset {cli.LOCAL_PRESET}" in err
    code, st_out, _ = _run(capsys, "status", out.split()[1])
    assert json.loads(st_out)["options"] == {"preset": "preview"}
    for argv in (("--preset", "high"), ("--option", "preset=high")):
        code, out, err = _run(capsys, "submit", str(tmp_path / "photos"), "--session", f"s{len(argv[0])}", *argv)
        assert code == 0 and "local stack (CPU)" not in err
        code, st_out, _ = _run(capsys, "status", out.split()[1])
        assert json.loads(st_out)["options"] == {"preset": "high"}


def test_cli_follow_ends_with_the_outputs_in_out(local_stack_env: Path, buckets: Buckets, fn_apps: FnApps,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`status --follow --out`: the bars run until the request ends, then the outputs are fetched."""
    import threading

    code, out, _ = _run(capsys, "submit", f"gs://{buckets.uploads}/front-follow/v.mp4", "--session", "front-follow")
    rid = out.split()[1]

    def finish() -> None:
        import time

        assert fn_apps.queue.get("/next").status_code == 200
        time.sleep(1.0)
        put_json(fn_apps.queue, f"/status/{rid}", {"stage": "frames", "stage_state": "RUNNING",
                                                   "progress": {"frames": 0.5},
                                                   "machine": {"machineType": "n2-standard-8",
                                                               "provisioningModel": "SPOT"}})
        time.sleep(1.0)
        gcs.client("splatpipe-local").bucket(buckets.data).blob(f"jobs/{rid}/frames/report.json").upload_from_string(
            b"{}")
        put_json(fn_apps.queue, f"/status/{rid}", {"stage": "frames", "stage_state": "SUCCEEDED"})
        put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED", "outputs": {
            "frames_report": f"gs://{buckets.data}/jobs/{rid}/frames/report.json"}})

    worker = threading.Thread(target=finish)
    worker.start()
    code, out, err = _run(capsys, "status", rid, "--follow", "--out", str(tmp_path / "out"))
    worker.join()
    assert code == 0, err
    assert "frames" in err and "COMPLETED" in out
    # A minute (the billing minimum) of a Spot n2-standard-8, from the server's price table.
    minute = f"${PRICES.machines['n2-standard-8'].spot / 60:.4f}"
    assert f"estimated cost: {minute} (frames {minute}; us-central1 prices of {PRICES.as_of})" in out, out
    assert (tmp_path / "out" / "frames" / "report.json").read_bytes() == b"{}"


def test_the_cost_line_sums_the_priced_stages() -> None:
    assert cli.cost_line({}) is None and cli.cost_line({"cost": {"estimated_usd": 0.0, "stages": {}}}) is None
    status = {"cost": {"estimated_usd": 0.25337, "prices": {"region": "us-central1", "as_of": "2026-12-07"},
                       "stages": {"sfm": {"usd": 0.0127}, "splat": {"usd": 0.24067}, "mesh": {"usd": None}}}}
    assert cli.cost_line(status) == ("estimated cost: $0.2534 (sfm $0.0127, splat $0.2407; us-central1 prices "
                                     "of 2026-12-07)")


def test_cli_follow_keeps_the_latest_snapshot_in_out(local_stack_env: Path, buckets: Buckets, fn_apps: FnApps,
                                                     firestore_host: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`status --follow --out DIR` while the splat trains: each newer snapshot replaces
    DIR/splat_latest.spz and its step is printed; the outputs come when the request completes."""
    import threading
    import time

    from splat_snapshots import publish_snapshot, small_spz

    monkeypatch.setenv("FIRESTORE_MIRROR", "1")
    code, out, _ = _run(capsys, "submit", f"gs://{buckets.uploads}/front-snap/v.mp4", "--session", "front-snap")
    rid = out.split()[1]
    ws = f"gs://{buckets.data}/jobs/{rid}"
    target = tmp_path / "out" / "splat_latest.spz"
    snapshots = [(100, small_spz(30, seed=1)), (250, small_spz(60, seed=2))]
    problems: list[BaseException] = []

    def saved(data: bytes) -> None:
        deadline = time.monotonic() + 30
        while not (target.exists() and target.read_bytes() == data):
            assert time.monotonic() < deadline, f"{target} never held the snapshot"
            time.sleep(0.1)

    def train() -> None:
        try:
            assert fn_apps.queue.get("/next").status_code == 200
            put_json(fn_apps.queue, f"/status/{rid}", {"stage": "splat", "stage_state": "RUNNING"})
            for step, data in snapshots:
                publish_snapshot(ws, rid, step, data)
                saved(data)
            scene = f"jobs/{rid}/splat/scene.spz"
            gcs.client("splatpipe-local").bucket(buckets.data).blob(scene).upload_from_string(b"final")
            put_json(fn_apps.queue, f"/status/{rid}", {"state": "COMPLETED", "outputs": {
                "splat_spz": f"gs://{buckets.data}/{scene}"}})
        except BaseException as exc:  # end the request so that the follow ends too
            problems.append(exc)
            put_json(fn_apps.queue, f"/status/{rid}", {"state": "CANCELLED"})

    worker = threading.Thread(target=train)
    worker.start()
    code, out, err = _run(capsys, "status", rid, "--follow", "--out", str(tmp_path / "out"))
    worker.join()
    assert not problems, problems
    assert code == 0, err
    assert f"splat_latest: step 100 saved to {target}" in err and f"splat_latest: step 250 saved to {target}" in err
    assert target.read_bytes() == snapshots[1][1]
    assert (tmp_path / "out" / "splat" / "scene.spz").read_bytes() == b"final"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["splat", "splat_latest.spz"]  # no .part left


def test_ctrl_c_while_following_leaves_the_request_running(local_stack_env: Path, buckets: Buckets,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "submit", f"gs://{buckets.uploads}/front-int/v.mp4", "--session", "front-int")
    rid = out.split()[1]
    calls = {"n": 0}
    real_sleep = __import__("time").sleep

    def interrupt(seconds: float) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_sleep(min(seconds, 0.05))

    monkeypatch.setattr("splatpipe.client.time.sleep", interrupt)
    with pytest.raises(SystemExit) as exited:
        cli.main(["status", rid, "--follow"])
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert f"splatpipe status --follow {rid}" in err
    monkeypatch.setattr("splatpipe.client.time.sleep", real_sleep)
    code, out, _ = _run(capsys, "status", rid)
    assert code == 0
    assert json.loads(out)["state"] == "QUEUED"  # not cancelled


def test_no_stack_and_no_api_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SPLATPIPE_STACK_DIR", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("splatpipe.client.find_local_stack", lambda start=None: None)
    code, _, err = _run(capsys, "options")
    assert code == 1 and "python -m emulator up" in err


def test_stage_times_come_from_the_stages_own_clock() -> None:
    import datetime as dt

    now = dt.datetime(2026, 1, 1, 12, 1, 40, tzinfo=dt.UTC)
    running = {"state": "RUNNING", "started_at": "2026-01-01T12:00:00.000Z", "finished_at": None}
    assert cli.stage_times(running, 0.25, now) == "01:40 ETA 05:00"
    assert cli.stage_times(running, 0.0, now) == "01:40 ETA ?"
    done = {"state": "SUCCEEDED", "started_at": "2026-01-01T12:00:00.000Z", "finished_at": "2026-01-01T13:02:03.000Z"}
    assert cli.stage_times(done, 1.0, now) == "1:02:03"
    assert cli.stage_times({"state": "PENDING", "started_at": None}, 0.0, now) == ""


def test_api_flag_sends_the_google_id_token(capsys: pytest.CaptureFixture[str]) -> None:
    from fn_testlib import RecordingServer

    with RecordingServer(lambda method, path, body: (200, {"presets": ["preview"], "default_preset": "preview",
                                                           "options": []})) as srv:
        code, out, _ = _run(capsys, "--api", f"http://{srv.host}", "--id-token", "tok-123", "options")
        (method, path, _, headers), = srv.requests
    assert code == 0 and "presets: preview" in out
    assert (method, path) == ("GET", "/options") and headers["Authorization"] == "Bearer tok-123"


def test_api_flag_without_credentials_is_a_clear_error(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # a gcloud with no login
    code, _, err = _run(capsys, "--api", "https://api.example.invalid", "options")
    assert code == 1 and "no Google ID token" in err


def test_session_names_come_from_the_source() -> None:
    from functions.intake.validation import SESSION_ID_RE
    from splatpipe.client import session_name

    assert session_name("../shared/datasets/sceaux-castle/images").startswith("sceaux-castle-images-")
    assert session_name("/tmp/My Walk.mp4/").startswith("My-Walk.mp4-")
    assert session_name("gs://b/x/").startswith("x-")
    for src in ("../shared/datasets/sceaux-castle/images", "/", "__/", "ümlaut", "-x"):
        assert SESSION_ID_RE.fullmatch(session_name(src)), src


def test_api_flag_on_loopback_needs_no_google_identity(capsys: pytest.CaptureFixture[str]) -> None:
    from fn_testlib import RecordingServer

    with RecordingServer(lambda method, path, body: (200, {"presets": [], "default_preset": "standard",
                                                           "options": []})) as srv:
        code, _, _ = _run(capsys, "--api", f"http://{srv.host}", "options")
        (_, _, _, headers), = srv.requests
    assert code == 0 and "Authorization" not in headers
