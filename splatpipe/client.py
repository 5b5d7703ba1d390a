"""The splatpipe SDK: the public `api` function's operations as typed methods.

    from splatpipe.client import Client

    client = Client.connect()                      # the local stack; Client.connect(api=URL) for Google Cloud
    req = client.submit("photos/", preset="preview")  # a folder of photos, a video file, or gs://…
    for status in req.follow():                    # a status snapshot about every second
        print(status["state"], status["stage"], status["progress"])
        if latest_splat_step(status) is not None:  # the splat training's latest snapshot (SPZ)
            req.save_latest_splat("out/splat_latest.spz")
    if status["state"] == "COMPLETED":
        req.download("out/")                       # {stage}/{file} for every output
    print(client.options()["presets"])             # what --preset and --option take

Local files travel through the api (`POST /uploads` hands out resumable upload URLs), so no
bucket rights are needed. Every call about a request carries its callback token, returned once
by `submit`: keep the handle (or `handle.token`) to come back to the request later.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from core import local_stack
from core import record as jobrecord
from core.api import TOKEN_HEADER
from core.media import PHOTO_EXTENSIONS

TERMINAL_STATES = frozenset(s.value for s in jobrecord.TERMINAL_STATES)
CHUNK_BYTES = 8 * 1024 * 1024  # resumable chunks must be multiples of 256 KiB (except the last)
LATEST_SPLAT_FILE = "splat_latest.spz"
LOG_POLL_SECONDS = 10.0  # `follow_log`: six reads a minute, within the api's default rate limit of ten
"""Where `splatpipe … --follow --out DIR` keeps the training's latest snapshot (`DIR/splat_latest.spz`)."""


def latest_splat_step(status: Mapping[str, Any]) -> int | None:
    """The training step of the splat stage's latest snapshot a status names (None: none yet)."""
    step = ((status.get("stages") or {}).get("splat") or {}).get("latest_splat_step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


class SplatpipeError(Exception):
    """An error answer of the api (`status`, `code`, `message`) or a client-side failure (status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message


GENERIC_FOLDERS = frozenset({"images", "photos", "pictures", "frames", "img", "jpg", "input"})


def session_name(path: str) -> str:
    """A fresh session id named after the source (`sceaux-castle-images-20261202-031500-ab12`)."""
    p = Path(path.rstrip("/"))
    name = p.name or "capture"
    if name.lower() in GENERIC_FOLDERS and p.parent.name:
        name = f"{p.parent.name}-{name}"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60] or "capture"
    if not base[0].isalnum():
        base = "c" + base
    return f"{base}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def local_files(path: Path) -> list[Path]:
    """The files a local source stands for: one video, or a folder's photos (sorted by name)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SplatpipeError(0, "not_found", f"{path} is neither a file nor a folder")
    photos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS)
    if not photos:
        raise SplatpipeError(0, "no_photos", f"{path} has no photos ({', '.join(PHOTO_EXTENSIONS)})")
    return photos


def find_local_stack(start: Path | None = None) -> str | None:
    """The api URL of a running local stack (core.local_stack): the one in
    `$SPLATPIPE_STACK_DIR`, else `.splatpipe/stack` in this folder or one above it, or next to
    this package."""
    dirs: list[Path] = []
    if os.environ.get("SPLATPIPE_STACK_DIR"):
        dirs.append(Path(os.environ["SPLATPIPE_STACK_DIR"]))
    here = (start or Path.cwd()).resolve()
    dirs += [d / local_stack.STACK_DIR for d in (here, *here.parents)]
    dirs.append(local_stack.DEFAULT_RUN_DIR)
    for d in dirs:
        state = local_stack.running_state(d)
        api = state.get("urls", {}).get("api") if state is not None else None
        if isinstance(api, str) and api:
            return api
    return None


def _loopback(url: str) -> bool:
    import urllib.parse

    return urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def google_id_token(audience: str) -> str:
    """A Google ID token for `audience`: google-auth's ADC (service accounts, the metadata server),
    else `gcloud auth print-identity-token` (a user's login)."""
    try:
        import google.auth.transport.requests
        import google.oauth2.id_token

        return str(google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience))
    except Exception:
        pass
    try:
        out = subprocess.run(["gcloud", "auth", "print-identity-token"], capture_output=True, text=True,
                             timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SplatpipeError(0, "no_credentials", "no Google ID token: run `gcloud auth login` or set "
                             f"GOOGLE_APPLICATION_CREDENTIALS ({exc})") from None
    return out.stdout.strip()


@dataclass
class RequestHandle:
    """One request and its callback token; the request's operations without repeating them."""

    client: Client
    request_id: str
    token: str

    def status(self) -> dict[str, Any]:
        return self.client.status(self.request_id, self.token)

    def follow(self, interval: float = 1.0, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        return self.client.follow(self.request_id, self.token, interval=interval, timeout=timeout)

    def cancel(self) -> dict[str, Any]:
        return self.client.cancel(self.request_id, self.token)

    def restart(self, from_stage: str | None = None, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.client.restart(self.request_id, self.token, from_stage=from_stage, options=options)

    def delete(self) -> dict[str, Any]:
        return self.client.delete(self.request_id, self.token)

    def manifest(self) -> dict[str, Any]:
        return self.client.manifest(self.request_id, self.token)

    def download(self, dest: str | Path) -> list[Path]:
        return self.client.download(self.request_id, self.token, dest)

    def latest_splat(self) -> bytes:
        return self.client.latest_splat(self.request_id, self.token)

    def log(self, line: int = 0) -> dict[str, Any]:
        return self.client.log(self.request_id, self.token, line)

    def follow_log(self, line: int = 0, interval: float = LOG_POLL_SECONDS) -> Iterator[dict[str, Any]]:
        return self.client.follow_log(self.request_id, self.token, line=line, interval=interval)

    def save_latest_splat(self, target: str | Path) -> Path:
        return self.client.save_latest_splat(self.request_id, self.token, target)


class Client:
    """A client of one splatpipe `api` (the local stack's, or a deployed one)."""

    def __init__(self, api_url: str, *, id_token: str | None = None, timeout: float = 60.0,
                 http: requests.Session | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.http = http or requests.Session()
        if id_token:
            self.http.headers["Authorization"] = f"Bearer {id_token}"

    @classmethod
    def connect(cls, api: str | None = None, *, id_token: str | None = None, timeout: float = 60.0) -> Client:
        """`api` given: a deployed environment, authorized by a Google ID token (found unless
        given). Else the local stack that is up (see :func:`find_local_stack`)."""
        if api:
            if id_token is None and _loopback(api):  # a local stack's own port: no Google identity
                return cls(api, timeout=timeout)
            return cls(api, id_token=id_token or google_id_token(api.rstrip("/")), timeout=timeout)
        url = find_local_stack()
        if url is None:
            raise SplatpipeError(0, "no_stack", "no local stack is up (start it with `python -m emulator up`), "
                                 "and no --api URL was given")
        return cls(url, timeout=timeout)

    @property
    def local(self) -> bool:
        """The api is a local stack's (on loopback): it trains on this machine's CPU."""
        return _loopback(self.api_url)

    # --- HTTP ----------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, token: str | None = None, json_body: Any = None,
              params: Mapping[str, str] | None = None, expect_json: bool = True) -> Any:
        headers = {TOKEN_HEADER: token} if token else {}
        try:
            resp = self.http.request(method, f"{self.api_url}{path}", json=json_body, params=params,
                                     headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise SplatpipeError(0, "unreachable", f"cannot reach {self.api_url}: {exc}") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise SplatpipeError(resp.status_code, str(err["code"]), str(err["message"]))
            except (ValueError, KeyError, TypeError):
                raise SplatpipeError(resp.status_code, "http_error", resp.text[:300] or resp.reason) from None
        return resp.json() if expect_json else resp

    # --- submitting ----------------------------------------------------------------------------
    def upload(self, path: str | Path, session_id: str) -> str:
        """Upload a local video or photo folder through the api; the gs:// input to trigger with."""
        files = local_files(Path(path))
        started = self._call("POST", "/uploads", json_body={
            "session_id": session_id,
            "files": [{"name": f.name, "content_type": mimetypes.guess_type(f.name)[0] or "application/octet-stream"}
                      for f in files]})
        for f, target in zip(files, started["files"], strict=True):
            self._upload_one(f, target)
        return str(started["input"])

    def _upload_one(self, path: Path, target: Mapping[str, Any]) -> None:
        # Resumable upload: open the session, then PUT the bytes in chunks with Content-Range
        # (https://cloud.google.com/storage/docs/performing-resumable-uploads).
        opened = requests.request(target["method"], target["url"], headers=dict(target["headers"]),
                                  data=str(target.get("body") or "").encode(), timeout=self.timeout)
        session_url = opened.headers.get("Location")
        if opened.status_code >= 300 or not session_url:
            raise SplatpipeError(opened.status_code, "upload_failed", f"cannot start the upload of {path.name}: "
                                 f"{opened.text[:200]}")
        size = path.stat().st_size
        with path.open("rb") as fh:
            offset = 0
            while True:
                chunk = fh.read(CHUNK_BYTES)
                end = offset + len(chunk)
                last = end >= size
                rng = f"bytes {offset}-{end - 1}/{size if last else '*'}" if chunk else f"bytes */{size}"
                resp = requests.put(session_url, data=chunk, headers={"Content-Range": rng}, timeout=self.timeout)
                if last:
                    if resp.status_code not in (200, 201):
                        raise SplatpipeError(resp.status_code, "upload_failed",
                                             f"upload of {path.name} failed: {resp.text[:200]}")
                    return
                if resp.status_code != 308:
                    raise SplatpipeError(resp.status_code, "upload_failed",
                                         f"upload of {path.name} failed at byte {offset}: {resp.text[:200]}")
                offset = end

    def submit(self, source: str | Path, *, session_id: str | None = None, preset: str | None = None,
               options: Mapping[str, Any] | None = None, priority: int | None = None,
               webhook_url: str | None = None, idempotency_key: str | None = None) -> RequestHandle:
        """Make a request for `source`: a local video, a local folder of photos (both uploaded
        first), or a gs:// URI the api may read. Returns its handle (with the callback token)."""
        source = str(source)
        sid = session_id or session_name(source)
        uri = source if source.startswith("gs://") else self.upload(source, sid)
        opts = dict(options or {})
        if preset:
            opts["preset"] = preset
        body: dict[str, Any] = {"session_id": sid, "input": uri}
        if opts:
            body["options"] = opts
        if priority is not None:
            body["priority"] = priority
        if webhook_url:
            body["webhook_url"] = webhook_url
        if idempotency_key:
            body["idempotency_key"] = idempotency_key
        made = self._call("POST", "/trigger-reconstruction", json_body=body)
        token = made.get("callback_token")
        if not token:
            raise SplatpipeError(200, "deduplicated", f"the api answered with the earlier request {made['request_id']}, "
                                 "whose callback token was handed out then")
        return RequestHandle(self, str(made["request_id"]), str(token))

    def handle(self, request_id: str, token: str) -> RequestHandle:
        return RequestHandle(self, request_id, token)

    # --- a request -----------------------------------------------------------------------------
    def status(self, request_id: str, token: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/status/{request_id}", token=token))

    def follow(self, request_id: str, token: str, *, interval: float = 1.0,
               timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Status snapshots every `interval` s until the request ends (the last one is final).
        Stopping the iteration (or Ctrl-C) leaves the request running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                snap = self.status(request_id, token)
            except SplatpipeError as exc:
                if exc.status not in (0, 429, 502, 503, 504):
                    raise
                time.sleep(max(interval, 2.0))  # the api restarting or busy: keep following
                continue
            yield snap
            if snap["state"] in TERMINAL_STATES:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise SplatpipeError(0, "timeout", f"request {request_id} still {snap['state']} after {timeout:.0f}s")
            time.sleep(interval)

    def log(self, request_id: str, token: str, line: int = 0) -> dict[str, Any]:
        """`GET /requests/{id}/log?line=N`: `{state, line, next_line, more, lines}`, the request's log
        lines (JSON objects: time, severity, message, stage, event, …) from line N on."""
        return dict(self._call("GET", f"/requests/{request_id}/log", token=token, params={"line": str(line)}))

    def follow_log(self, request_id: str, token: str, *, line: int = 0,
                   interval: float = LOG_POLL_SECONDS) -> Iterator[dict[str, Any]]:
        """Every log line from `line` on as it comes, until the request has ended and a last read
        finds nothing new (NodeODM's task output, followed). The route is rate-limited per caller
        (RATE_LIMIT_PER_MINUTE), hence the unhurried default `interval`."""
        ended = False
        while True:
            try:
                page = self.log(request_id, token, line)
            except SplatpipeError as exc:
                if exc.status not in (0, 429, 502, 503, 504):
                    raise
                time.sleep(interval)  # over the limit, or the api or the log busy: keep following
                continue
            yield from page["lines"]
            line = int(page["next_line"])
            if page["more"]:
                continue  # a full page: more is waiting already
            if ended and not page["lines"]:
                return
            # One more read after the end: the last lines may reach the log after the state changes.
            ended = page["state"] in TERMINAL_STATES
            time.sleep(interval)

    def cancel(self, request_id: str, token: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/requests/{request_id}/cancel", token=token))

    def restart(self, request_id: str, token: str, *, from_stage: str | None = None,
                options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if from_stage:
            body["from_stage"] = from_stage
        if options:
            body["options"] = dict(options)
        return dict(self._call("POST", f"/requests/{request_id}/restart", token=token, json_body=body))

    def delete(self, request_id: str, token: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/requests/{request_id}", token=token))

    def manifest(self, request_id: str, token: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/requests/{request_id}/download", token=token))

    def download(self, request_id: str, token: str, dest: str | Path) -> list[Path]:
        """Every output into `dest/{stage}/{file}`; the paths written."""
        out = Path(dest)
        written = []
        for f in self.manifest(request_id, token)["files"]:
            target = out / f["path"]
            if ".." in Path(f["path"]).parts or Path(f["path"]).is_absolute():
                raise SplatpipeError(0, "bad_manifest", f"refusing to write outside {out}: {f['path']}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with requests.get(f["url"], stream=True, timeout=self.timeout) as resp:
                if resp.status_code != 200:
                    raise SplatpipeError(resp.status_code, "download_failed", f"{f['path']}: {resp.text[:200]}")
                tmp = target.with_name(target.name + ".part")
                with tmp.open("wb") as fh:
                    for block in resp.iter_content(1 << 20):
                        fh.write(block)
                tmp.replace(target)
            written.append(target)
        return written

    def latest_splat(self, request_id: str, token: str) -> bytes:
        """The splat training's latest snapshot (SPZ bytes; the status's `latest_splat_step` names
        its step). SplatpipeError 409 `wrong_state` while there is none."""
        return bytes(self._call("GET", f"/requests/{request_id}/splat-latest", token=token, expect_json=False).content)

    def save_latest_splat(self, request_id: str, token: str, target: str | Path) -> Path:
        """The latest snapshot written to `target` (replaced whole: a reader never sees half a file)."""
        path = Path(target)
        data = self.latest_splat(request_id, token)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    # --- the api -------------------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """Presets and every option: type, default, allowed values, help."""
        return dict(self._call("GET", "/options"))

    def list(self, session_id: str, token: str) -> list[dict[str, Any]]:
        """The session's requests, newest first (`token`: a callback token of any of them)."""
        return list(self._call("GET", "/requests", token=token, params={"session_id": session_id})["requests"])
