"""`splatpipe`: the command line over :mod:`splatpipe.client`.

    splatpipe submit PATH|gs://… [--preset P] [--option KEY=VALUE]… [--priority N] [--webhook URL]
                     [--follow] [--out DIR]
    splatpipe status ID [--follow [--out DIR]] | cancel ID | restart ID [--from-stage S] [--option K=V]…
    splatpipe delete ID | download ID --out DIR | list [--session S] | options

Following with `--out DIR` also keeps the splat training's latest snapshot in
`DIR/splat_latest.spz` (replaced by each newer one, its step printed) until the outputs arrive.

With no `--api` it talks to the local stack that is up; `--api URL` talks to a deployed `api`
with a Google ID token. The callback token `submit` receives is kept in
`~/.splatpipe/requests.json` (`$SPLATPIPE_HOME`), so later commands need only the id.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.stages import ORDER
from splatpipe.client import LATEST_SPLAT_FILE, Client, RequestHandle, SplatpipeError, latest_splat_step

# --- the token store ---------------------------------------------------------------------------


def _home() -> Path:
    return Path(os.environ.get("SPLATPIPE_HOME") or Path.home() / ".splatpipe")


def _store_path() -> Path:
    return _home() / "requests.json"


def _load_store() -> dict[str, dict[str, str]]:
    try:
        return dict(json.loads(_store_path().read_text()))
    except (OSError, ValueError):
        return {}


def remember(handle: RequestHandle, session_id: str) -> None:
    store = _load_store()
    store[handle.request_id] = {"token": handle.token, "api": handle.client.api_url, "session_id": session_id}
    path = _store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    # The tokens are secrets: readable by this user only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(store, fh, indent=2)
    tmp.replace(path)


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    entry = _load_store().get(args.id)
    if not entry:
        raise SplatpipeError(0, "no_token", f"no callback token known for {args.id}; pass --token")
    return entry["token"]


# --- values --------------------------------------------------------------------------------------


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; VALUE as JSON when it parses (numbers, true/false), else as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SplatpipeError(0, "bad_option", f"--option takes KEY=VALUE, not {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# --- following -----------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    m, sec = divmod(int(max(0.0, seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def stage_times(stage: Mapping[str, Any], fraction: float, now: dt.datetime | None = None) -> str:
    """`elapsed` of a running or finished stage (from its own start), with an ETA while it runs."""
    started, finished = stage.get("started_at"), stage.get("finished_at")
    if not started:
        return ""
    t0 = dt.datetime.fromisoformat(str(started).replace("Z", "+00:00"))
    t1 = dt.datetime.fromisoformat(str(finished).replace("Z", "+00:00")) if finished else (now or dt.datetime.now(dt.UTC))
    elapsed = (t1 - t0).total_seconds()
    if finished or stage.get("state") != "RUNNING":
        return _clock(elapsed)
    eta = _clock(elapsed * (1 - fraction) / fraction) if 0.02 <= fraction < 1 else "?"
    return f"{_clock(elapsed)} ETA {eta}"


class StageBars:
    """One progress bar per stage: its state, the stage's elapsed time and ETA (from the stage's
    own start time and progress), and its latest message."""

    def __init__(self, stages: Sequence[str], stream: Any = None) -> None:
        from tqdm import tqdm

        self.stream = stream or sys.stderr
        self.bars = {s: tqdm(total=100, position=i, leave=True, file=self.stream, dynamic_ncols=True,
                             desc=f"{s:6} {'PENDING':10}", bar_format="{desc}{bar:24} {n:3.0f}%{postfix}")
                     for i, s in enumerate(stages)}

    def update(self, status: Mapping[str, Any]) -> None:
        for s, bar in self.bars.items():
            st = (status.get("stages") or {}).get(s) or {}
            state = str(st.get("state") or "PENDING")
            frac = float((status.get("progress") or {}).get(s) or 0.0)
            if state in ("SUCCEEDED", "SKIPPED"):
                frac = 1.0
            bar.n = round(100 * frac, 1)
            bar.set_description_str(f"{s:6} {state:10}", refresh=False)
            parts = [p for p in (stage_times(st, frac), str(st.get("message") or "")[:70]) if p]
            bar.set_postfix_str("  ".join(parts), refresh=False)
            bar.refresh()

    def write(self, line: str) -> None:
        """A line above the bars."""
        from tqdm import tqdm

        tqdm.write(line, file=self.stream)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class SnapshotSaver:
    """Keeps the splat training's latest snapshot in `out/splat_latest.spz` while a request is
    followed: fetched when the status names a newer step, replaced whole."""

    def __init__(self, handle: RequestHandle, out: Path) -> None:
        self.handle = handle
        self.target = out / LATEST_SPLAT_FILE
        self.step: int | None = None

    def update(self, status: Mapping[str, Any]) -> str | None:
        """Save the snapshot if the status names a new one; the line to print about it, if any."""
        step = latest_splat_step(status)
        if step is None or step == self.step:
            return None
        try:
            self.handle.save_latest_splat(self.target)
        except SplatpipeError as exc:
            if exc.status in (0, 409, 429, 502, 503, 504):  # gone meanwhile (a restart), busy: the next poll
                return None
            self.step = step  # refused (too large, say): following goes on, this step is not asked again
            return f"splat_latest: step {step:,} not saved: {exc}"
        self.step = step
        return f"splat_latest: step {step:,} saved to {self.target} ({self.target.stat().st_size:,} bytes)"


def follow(handle: RequestHandle, quiet: bool = False, out: Path | None = None) -> dict[str, Any]:
    """Follow with progress bars until the request ends; Ctrl-C stops following only. With `out`,
    the training's latest snapshot is kept in `out/splat_latest.spz` meanwhile."""
    bars: StageBars | None = None
    saver = SnapshotSaver(handle, out) if out is not None else None
    last: dict[str, Any] = {}
    try:
        for snap in handle.follow():
            last = snap
            if not quiet:
                if bars is None:
                    bars = StageBars([s for s in ORDER if s in snap.get("stages_requested", ORDER)])
                bars.update(snap)
            said = saver.update(snap) if saver is not None else None
            if said and bars is not None:
                bars.write(said)
            elif said:
                print(said, file=sys.stderr)
    except KeyboardInterrupt:
        if bars is not None:
            bars.close()
            bars = None
        print(f"\nstopped following; request {handle.request_id} goes on "
              f"({last.get('state', 'unknown')}). Resume with: splatpipe status --follow {handle.request_id}",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if bars is not None:
            bars.close()
    return last


def cost_line(status: Mapping[str, Any]) -> str | None:
    """The status's estimated cost in one line (`cost`: the server prices each stage's machine
    time from its price table), or None when no stage has been priced."""
    cost = status.get("cost") or {}
    priced = {s: c["usd"] for s, c in (cost.get("stages") or {}).items() if c.get("usd") is not None}
    if not priced:
        return None
    prices = cost.get("prices") or {}
    parts = ", ".join(f"{s} ${usd:.4f}" for s, usd in priced.items())
    return (f"estimated cost: ${cost.get('estimated_usd', 0.0):.4f} ({parts}; {prices.get('region')} prices "
            f"of {prices.get('as_of')})")


def _finish(handle: RequestHandle, status: Mapping[str, Any], out: Path | None) -> int:
    state = status.get("state")
    for w in status.get("warnings") or []:
        print(f"warning [{w.get('stage')}] {w.get('code')}: {w.get('message')}", file=sys.stderr)
    if (line := cost_line(status)) is not None:
        print(line)
    if state != "COMPLETED":
        err = status.get("error") or {}
        print(f"request {handle.request_id} ended {state}: [{err.get('code')}] {err.get('message')} "
              f"(stage {err.get('stage')})", file=sys.stderr)
        return 1
    metrics = status.get("metrics") or {}
    for stage, values in metrics.items():
        if values:
            print(f"{stage}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    if out is not None:
        files = handle.download(out)
        print(f"COMPLETED; {len(files)} files in {out}:")
        for f in files:
            print(f"  {f.relative_to(out)}  ({f.stat().st_size:,} bytes)")
    else:
        print("COMPLETED")
    return 0


LOCAL_PRESET = "preview"

# --- commands ------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    api = args.api
    if not api and getattr(args, "id", None):
        api = (_load_store().get(args.id) or {}).get("api")
        if api and api.startswith("http://127.0.0.1"):
            api = None  # the local stack: its port changes with each `up`
    return Client.connect(api=api, id_token=args.id_token)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    opts = parse_options(args.option or [])
    preset = args.preset or opts.pop("preset", None)
    if preset is None and client.local:
        # The service's default preset is sized for a GPU VM; on the local stack's CPU it takes
        # over an hour for a dozen photos, so a local submit without a preset asks for the CPU one.
        preset = LOCAL_PRESET
        print(f"local stack (CPU): preset {preset} (--preset standard for the full-quality one)",
              file=sys.stderr)
    handle = client.submit(args.source, session_id=args.session, preset=preset, options=opts,
                           priority=args.priority, webhook_url=args.webhook)
    sid = client.status(handle.request_id, handle.token)["session_id"]
    remember(handle, sid)
    print(f"request {handle.request_id} (session {sid}); callback token saved in {_store_path()}")
    if not args.follow:
        print(f"follow it with: splatpipe status --follow {handle.request_id}")
        return 0
    return _finish(handle, follow(handle, out=args.out), args.out)


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    handle = client.handle(args.id, _token(args))
    if args.follow:
        return _finish(handle, follow(handle, out=args.out), args.out)
    _print(handle.status())
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    _print(_client(args).cancel(args.id, _token(args)))
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    client = _client(args)
    handle = client.handle(args.id, _token(args))
    status = handle.restart(from_stage=args.from_stage, options=parse_options(args.option or []))
    print(f"request {args.id} is {status['state']} again")
    if args.follow:
        return _finish(handle, follow(handle, out=args.out), args.out)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _print(_client(args).delete(args.id, _token(args)))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    files = _client(args).download(args.id, _token(args), args.out)
    for f in files:
        print(f)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = _load_store()
    sessions = {args.session} if args.session else {e["session_id"] for e in store.values() if e.get("session_id")}
    client = _client(args)
    for sid in sorted(sessions):
        token = args.token or next((e["token"] for e in store.values() if e.get("session_id") == sid), None)
        if not token:
            raise SplatpipeError(0, "no_token", f"no callback token known for session {sid}; pass --token")
        for r in client.list(sid, token):
            print(f"{r['request_id']}  {r['state']:10} {r.get('stage') or '-':7} {sid}  {r['created_at']}")
    return 0


def log_line(line: Mapping[str, Any]) -> str:
    """One log line as text: time, severity, the stage (or -), the message."""
    return f"{line.get('time', '')}  {line.get('severity', ''):8} {line.get('stage') or '-':6} {line.get('message', '')}"


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    token = _token(args)
    lines: Iterable[Mapping[str, Any]] = (client.follow_log(args.id, token, line=args.line) if args.follow
                                          else client.log(args.id, token, args.line)["lines"])
    for line in lines:
        print(json.dumps(line) if args.json else log_line(line), flush=True)
    return 0


def cmd_options(args: argparse.Namespace) -> int:
    cat = _client(args).options()
    if args.json:
        _print(cat)
        return 0
    print(f"presets: {', '.join(cat['presets'])} (default {cat['default_preset']})")
    for o in cat["options"]:
        allowed = (", ".join(map(str, o["choices"])) if o["choices"] else
                   f"{o['minimum']:g}..{o['maximum']:g}" if o["minimum"] is not None else o["type"])
        per = o.get("preset_values")
        per_txt = " (" + ", ".join(f"{p}: {v}" for p, v in per.items()) + ")" if per else ""
        print(f"  {o['name']:16} {o['type']:8} default {o['default']!s:10} [{allowed}]  {o['help']}{per_txt}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splatpipe", description="Video or photos in, a 3D Gaussian splat and a mesh out.")
    p.add_argument("--api", help="a deployed api's URL (default: the local stack that is up)")
    p.add_argument("--id-token", help="a Google ID token for --api (default: ADC or gcloud)")
    sub = p.add_subparsers(dest="command", required=True)

    def with_id(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("id", help="the request id")
        sp.add_argument("--token", help="the request's callback token (default: the one saved by submit)")

    s = sub.add_parser("submit", help="reconstruct a video, a folder of photos or a gs:// input")
    s.add_argument("source", help="a video file, a folder of photos, or gs://bucket/path")
    s.add_argument("--preset", help="preview, standard or high (see `splatpipe options`; "
                   "default: the service's, preview on the local stack)")
    s.add_argument("--option", action="append", metavar="KEY=VALUE", help="an option override (repeatable)")
    s.add_argument("--priority", type=int, help="0 (highest) to 9")
    s.add_argument("--webhook", help="an https URL told when the request ends (signed)")
    s.add_argument("--session", help="the session id (default: from the source's name)")
    s.add_argument("--follow", action="store_true", help="show progress until the request ends")
    s.add_argument("--out", type=Path, help="with --follow: keep the training's latest snapshot in "
                   f"DIR/{LATEST_SPLAT_FILE}, and download the outputs here when it completes")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("status", help="a request's status")
    with_id(s)
    s.add_argument("--follow", action="store_true", help="show progress until the request ends")
    s.add_argument("--out", type=Path, help="with --follow: keep the training's latest snapshot in "
                   f"DIR/{LATEST_SPLAT_FILE}, and download the outputs here when it completes")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("cancel", help="cancel a QUEUED or PROCESSING request")
    with_id(s)
    s.set_defaults(fn=cmd_cancel)

    s = sub.add_parser("restart", help="run a finished request again (same workspace)")
    with_id(s)
    s.add_argument("--from-stage", help="rerun this stage and every later one")
    s.add_argument("--option", action="append", metavar="KEY=VALUE")
    s.add_argument("--follow", action="store_true")
    s.add_argument("--out", type=Path)
    s.set_defaults(fn=cmd_restart)

    s = sub.add_parser("delete", help="remove a request's outputs (the record stays, DELETED)")
    with_id(s)
    s.set_defaults(fn=cmd_delete)

    s = sub.add_parser("download", help="download a request's outputs")
    with_id(s)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(fn=cmd_download)

    s = sub.add_parser("list", help="the requests of your sessions (or of --session)")
    s.add_argument("--session")
    s.add_argument("--token", help="a callback token of any request of the session")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("logs", help="a request's log, from its acceptance through every stage")
    with_id(s)
    s.add_argument("--line", type=int, default=0, help="start at this line (0: the first)")
    s.add_argument("--follow", action="store_true", help="keep printing new lines until the request ends")
    s.add_argument("--json", action="store_true", help="each line as the JSON object it was logged as")
    s.set_defaults(fn=cmd_logs)

    s = sub.add_parser("options", help="presets and every option")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_options)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "out", None) is not None and args.command == "submit" and not args.follow:
        print("--out needs --follow (the outputs are downloaded when the request completes)", file=sys.stderr)
        return 2
    try:
        return int(args.fn(args))
    except SplatpipeError as exc:
        print(f"splatpipe: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
