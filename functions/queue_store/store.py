"""The request queue in Redis: records, the priority queue, leases — every change one Lua script.

Keys (prefix `sp:`):
  req:{id}      HASH   the record: `doc` (JSON of what never changes: session_id, input, options,
                       stages_requested, token digest, source, webhook_url), scalars (state,
                       priority, seq, version, attempts, times, stage, execution) and JSON text
                       for stages/progress/outputs/error/warnings/metrics
  queue         ZSET   QUEUED ids by priority, then arrival sequence (FIFO): lua/lib.lua `score`
  leases        ZSET   PROCESSING ids, score = lease expiry (ms); its size is "running"
  seq           STRING arrival counter
  counts        HASH   records per state
  outbox        HASH   id -> record version not yet mirrored to Firestore (see functions.status.mirror)
  token:{sha}   STRING callback token digest -> id
  session:{sid} ZSET   the session's request ids, score = arrival sequence (`GET /requests?session_id=`)
  dedup:{key}   STRING dedup key -> id, expiring after its window (see functions.intake.dedup)
  finished      ZSET   finished ids whose final version is in Firestore, score = when they finished
                       (ms): retention evicts them from Redis after `RECORD_RETENTION_SECONDS`
  acks          STRING a counter each replicated write bumps before its WAIT (`_run_replicated`)

The scripts are functions/queue_store/lua/*.lua (each documents its KEYS and ARGV). They read the clock with
Redis TIME, so every function instance shares one clock; each runs atomically, so concurrent
callers never hand out a request twice or make an illegal transition.
With AOF on, a restart keeps all of it. Memorystore has no AOF and replicates asynchronously
(https://cloud.google.com/memorystore/docs/redis/high-availability: "acknowledged writes might be
lost during a failover"): `Replication` makes a write wait (Redis WAIT, a supported command:
https://cloud.google.com/memorystore/docs/redis/supported-commands) until a replica holds it.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from core import record as jobrecord
from core import stages
from core.record import Record, StageState
from functions.intake.dedup import DedupKey
from functions.intake.validation import NewRequest
from functions.queue_store import lua
from functions.queue_store.rate_limit import Decision, WindowCall

PREFIX = "sp:"

log = logging.getLogger("splatpipe.queue")

# One encoder for every call: json.dumps with non-default arguments builds a new one each time.
_COMPACT = json.JSONEncoder(separators=(",", ":"))

def _lua_set(members: Iterable[str]) -> str:
    return "{" + ", ".join(f"{m} = true" for m in sorted(members)) + "}"


# jobrecord's states and bounds, and the best-effort stages of the registry (core.stages).
_RESTARTABLE = f"local restartable = {_lua_set(jobrecord.RESTARTABLE_STATES)}"
_TERMINAL = f"local terminal = {_lua_set(jobrecord.TERMINAL_STATES)}"
_UPDATE_TABLES = "\n".join([
    "local legal = {" + ", ".join(f"{src} = {_lua_set(dsts)}" for src, dsts in jobrecord.LEGAL_TRANSITIONS.items()) + "}",
    _TERMINAL,
    f"local best_effort = {_lua_set(s.name for s in stages.REGISTRY.values() if s.best_effort)}",
    f"local max_warnings, max_metrics = {jobrecord.MAX_WARNINGS}, {jobrecord.MAX_METRICS_PER_STAGE}",
])
_DONE = frozenset({StageState.SUCCEEDED.value, StageState.SKIPPED.value})
_SCRIPTS = {name: lua.script(name, *generated) for name, generated in {
    "enqueue": (lua.WINDOW,), "take": (), "update": (_UPDATE_TABLES,), "requeue": (), "renew_expired": (), "expired": (),
    "stats": (), "outbox_ack": (_TERMINAL,), "restart": (_RESTARTABLE,), "tombstone": (_RESTARTABLE,),
    "restore": (_TERMINAL,), "evict": (_TERMINAL,), "withdraw": ()}.items()}


class RecordNotFoundError(LookupError):
    """No record with that id."""


class IllegalTransitionError(Exception):
    """An illegal transition; `.state` is the record's current state."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class Replication:
    """How many replicas must hold a write before the queue calls it done: WAIT `replicas`
    `timeout_ms` on the connection that wrote (WAIT waits for that connection's own writes).
    0: no waiting (a lone redis-server whose AOF fsyncs every write, as locally)."""

    replicas: int = 0
    timeout_ms: int = 500


@dataclass(frozen=True)
class EnqueueResult:
    request_id: str
    created: bool  # False: a duplicate, `request_id` is the earlier request
    state: str
    decision: Decision | None = None  # the rate limit's, when the enqueue counted the call
    replicated: bool = True  # False: `Replication.replicas` did not confirm it within the timeout


@dataclass(frozen=True)
class Taken:
    request_id: str
    version: int
    lease_expires_at: int  # ms since the epoch


def new_request_id() -> str:
    return secrets.token_hex(16)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RequestQueue:
    """The queue's operations over one Redis client (`decode_responses=True`)."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX, replication: Replication = Replication()) -> None:
        self.r = client
        self.prefix = prefix
        self.replication = replication
        self.k_queue = prefix + "queue"
        self.k_leases = prefix + "leases"
        self.k_seq = prefix + "seq"
        self.k_counts = prefix + "counts"
        self.k_outbox = prefix + "outbox"
        self.k_finished = prefix + "finished"
        self.k_acks = prefix + "acks"
        self._scripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}

    def _run(self, script: str, keys: list[str], *args: Any) -> Any:
        return self._scripts[script](keys=keys, args=list(args))

    def _run_replicated(self, script: str, keys: list[str], *args: Any) -> tuple[Any, bool]:
        """`_run`, then WAIT on the same connection (one round trip): the script's reply and
        whether `replication.replicas` replicas hold its writes."""
        need = self.replication.replicas
        if need <= 0:
            return self._run(script, keys, *args), True
        for attempt in range(2):
            pipe = self.r.pipeline(transaction=False)
            self._scripts[script](keys=keys, args=list(args), client=pipe)
            # WAIT waits for this connection's last write, and a script that wrote nothing (a
            # duplicate: the record another call wrote) leaves that behind the record's write.
            # One write of our own after the script puts it past everything written before.
            pipe.incr(self.k_acks)
            pipe.wait(need, self.replication.timeout_ms)
            try:
                res, _, acked = pipe.execute()
                break
            except redis.exceptions.NoScriptError:
                # A failover's new primary has no script cache; the pipeline checked it on a
                # connection to the old one. Once more: the check now runs on the new primary.
                if attempt:
                    raise
        return res, int(acked) >= need

    def record_key(self, request_id: str) -> str:
        return f"{self.prefix}req:{request_id}"

    def token_key(self, token_sha256: str) -> str:
        return f"{self.prefix}token:{token_sha256}"

    def dedup_key(self, key: str) -> str:
        return f"{self.prefix}dedup:{key}"

    def session_key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    # --- enqueue / take -------------------------------------------------------------------------

    def enqueue(self, req: NewRequest, *, token_sha256: str, dedup: Iterable[tuple[DedupKey, int]] = (),
                source: str = "api", request_id: str | None = None,
                counted: WindowCall | None = None) -> EnqueueResult:
        """Create a QUEUED record unless a dedup key names a live earlier one (then that one).
        `counted`: first count the call against its caller's rate limit; a call over it changes
        nothing (the result is not created, with the refusing decision)."""
        rid = request_id or new_request_id()
        dedup = list(dedup)
        # Fields not yet set (stage, stages, progress, outputs, error, execution) are simply absent.
        doc = {"session_id": req.session_id, "input": req.input, "options": req.options,
               "stages_requested": list(req.stages), "token_sha256": token_sha256, "source": source}
        if req.webhook_url:
            doc["webhook_url"] = req.webhook_url
        keys = [self.record_key(rid), self.k_queue, self.k_seq, self.k_counts, self.k_outbox,
                self.token_key(token_sha256), counted.key if counted else self.prefix + "rl:none",
                *(self.dedup_key(k.key) for k, _ in dedup)]
        meta = ",".join(f"{max(1, int(ttl))}:{int(k.sticky)}" for k, ttl in dedup)
        window = (counted.limit, counted.window_ms, counted.member) if counted else (0, 0, "")
        (kind, found_id, state, n), replicated = self._run_replicated(
            "enqueue", keys, rid, req.priority, meta, self.prefix + "req:", _COMPACT.encode(doc),
            self.session_key(req.session_id), *window)
        if kind == "limited":
            return EnqueueResult("", False, "", Decision(False, 0, max(0, int(n))))
        return EnqueueResult(found_id, kind == "new", state, Decision(True, int(n), 0) if counted else None,
                             replicated)

    def take(self, lease_seconds: float, max_running: int = 0) -> Taken | None:
        """Hand out the highest-priority, oldest QUEUED request as PROCESSING with a lease.

        `max_running` > 0: only while fewer than that many requests hold a lease (admission).
        """
        got, replicated = self._run_replicated("take", [self.k_queue, self.k_leases, self.k_counts, self.k_outbox],
                                               int(lease_seconds * 1000), int(max_running), self.prefix + "req:")
        if not got:
            return None
        self._unreplicated(replicated, "take", got[0])
        return Taken(got[0], int(got[1]), int(got[2]))

    # --- records --------------------------------------------------------------------------------

    # The client decodes replies (`decode_responses=True`), a runtime setting redis-py's types
    # cannot see: they say `bytes | str`, hence the casts to str below.

    def get_raw(self, request_id: str) -> dict[str, str] | None:
        h = cast("dict[str, str]", self.r.hgetall(self.record_key(request_id)))
        return h or None

    def get(self, request_id: str) -> Record | None:
        h = self.get_raw(request_id)
        return Record.from_redis(h) if h else None

    def get_many(self, request_ids: Iterable[str]) -> dict[str, Record | None]:
        """Several records in one round trip (None: no such record)."""
        ids = list(request_ids)
        pipe = self.r.pipeline(transaction=False)
        for rid in ids:
            pipe.hgetall(self.record_key(rid))
        return {rid: Record.from_redis(h) if h else None for rid, h in zip(ids, pipe.execute(), strict=True)}

    def id_for_token(self, token_sha256: str) -> str | None:
        return cast("str | None", self.r.get(self.token_key(token_sha256)))

    def update(self, request_id: str, patch: Mapping[str, Any], lease_seconds: float) -> Record:
        """Apply a validated `PUT /status` patch; the updated record. RecordNotFoundError / IllegalTransitionError."""
        if patch.get("stage_state") in _DONE:  # a stage done is done to the end
            patch = {**patch, "progress": {**patch.get("progress", {}), patch["stage"]: 1}}
        res, replicated = self._run_replicated("update", self._lease_keys(request_id), request_id,
                                               _COMPACT.encode(patch), int(lease_seconds * 1000))
        if res[0] == "missing":
            raise RecordNotFoundError(request_id)
        if res[0] == "conflict":
            cur = res[1]
            want = patch.get("state")
            if len(res) > 2:
                msg = f"request cannot be COMPLETED: stage {res[2]} FAILED and is not best-effort"
            elif cur in {s.value for s in jobrecord.TERMINAL_STATES}:
                msg = f"request is {cur}; " + (f"it cannot become {want}" if want else "it takes no more updates")
            else:
                msg = f"illegal transition {cur} -> {want}"
            raise IllegalTransitionError(cur, msg)
        self._unreplicated(replicated, "update", request_id)
        return Record.from_redis(_pairs(res[3]))

    def _unreplicated(self, replicated: bool, what: str, request_id: str) -> None:
        # Only an accept has a durable fallback (functions.intake.accept). A take or an update
        # lost in a failover is redone: the lease brings the request back, the workflow's next
        # status update writes the stage again.
        if not replicated:
            log.warning("request %s: %s not confirmed by %d replica(s) within %d ms", request_id, what,
                        self.replication.replicas, self.replication.timeout_ms)

    # --- leases ---------------------------------------------------------------------------------

    def expired_leases(self, limit: int = 100) -> list[str]:
        return list(self._run("expired", [self.k_leases], limit))

    def requeue_expired(self, request_id: str, max_attempts: int) -> str:
        """'requeued', 'failed' (too many attempts) or 'skip' (not expired / not PROCESSING any more)."""
        return self._run("requeue", self._lease_keys(request_id), request_id, max_attempts, "expired", 0)[0]

    def release(self, request_id: str, version: int) -> bool:
        """Put a request just taken back at its place (its execution could not start)."""
        res = self._run("requeue", self._lease_keys(request_id), request_id, 0, "release", version)
        return res[0] == "requeued"

    def renew_expired(self, request_id: str, lease_seconds: float) -> bool:
        return bool(self._run("renew_expired", [self.record_key(request_id), self.k_leases], request_id,
                              int(lease_seconds * 1000)))

    def _lease_keys(self, request_id: str) -> list[str]:
        return [self.record_key(request_id), self.k_queue, self.k_leases, self.k_counts, self.k_outbox]

    def running(self) -> int:
        return int(self.r.zcard(self.k_leases))

    # --- statistics -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        counts_flat, byprio, oldest, running, now = self._run(
            "stats", [self.k_counts, self.k_queue, self.k_leases], self.prefix + "req:", jobrecord.PRIORITY_MAX)
        counts = {s.value: 0 for s in jobrecord.State}
        counts.update({k: int(v) for k, v in _pairs(counts_flat).items()})
        oldest = int(oldest)
        return {
            "counts": counts,
            "queued_by_priority": {str(p): int(n) for p, n in enumerate(byprio)},
            "oldest_wait_seconds": round((int(now) - oldest) / 1000.0, 3) if oldest >= 0 else None,
            "running": int(running),
        }

    # --- restart, delete, sessions -------------------------------------------------------------

    def restart(self, request_id: str, version: int, options: Mapping[str, Any]) -> None:
        """A finished request (at `version`) QUEUED again with `options`. RecordNotFoundError;
        IllegalTransitionError when it is not finished or changed since it was read."""
        raw = self.get_raw(request_id)
        if raw is None:
            raise RecordNotFoundError(request_id)
        doc = json.loads(raw["doc"])
        doc["options"] = dict(options)
        res = self._run("restart", [self.record_key(request_id), self.k_queue, self.k_seq, self.k_counts,
                                    self.k_outbox], request_id, version, _COMPACT.encode(doc))
        if res[0] == "missing":
            raise RecordNotFoundError(request_id)
        if res[0] == "conflict":
            raise IllegalTransitionError(res[1], f"request is {res[1]}; only a finished request can be restarted")
        if res[0] == "changed":
            raise IllegalTransitionError(res[1], "request changed meanwhile; read it and try again")

    def tombstone(self, request_id: str) -> None:
        """A finished request becomes DELETED (its outputs forgotten). RecordNotFoundError;
        IllegalTransitionError when it is still QUEUED or PROCESSING."""
        res = self._run("tombstone", [self.record_key(request_id), self.k_counts, self.k_outbox], request_id)
        if res[0] == "missing":
            raise RecordNotFoundError(request_id)
        if res[0] == "conflict":
            raise IllegalTransitionError(res[1], f"request is {res[1]}; cancel it before deleting it")

    def session_requests(self, session_id: str, limit: int = 1000) -> list[str]:
        """The session's request ids, oldest first (at most `limit`, the newest ones)."""
        return list(cast("list[str]", self.r.zrange(self.session_key(session_id), -limit, -1)))

    # --- Firestore outbox -----------------------------------------------------------------------

    def outbox(self, limit: int = 500) -> dict[str, int]:
        """Ids whose latest version is not yet mirrored -> that version."""
        out: dict[str, int] = {}
        for k, v in self.r.hscan_iter(self.k_outbox, count=min(limit, 1000)):
            out[k] = int(v)
            if len(out) >= limit:
                break
        return out

    def outbox_ack(self, request_id: str, version: int) -> bool:
        """Mark `version` mirrored; False when a newer version arrived meanwhile (it stays pending)."""
        return bool(self._run("outbox_ack", [self.k_outbox, self.record_key(request_id), self.k_finished],
                              request_id, version))

    # --- retention and restore ------------------------------------------------------------------

    def evict_finished(self, finished_before_ms: int, limit: int = 200) -> list[str]:
        """Finished records mirrored to Firestore and finished at or before `finished_before_ms`
        leave Redis with their token and session entries (evict.lua); the ids that went."""
        return list(self._run("evict", [self.k_finished, self.k_outbox, self.k_counts], finished_before_ms, limit,
                              self.prefix + "req:", self.prefix + "token:", self.prefix + "session:"))

    def restore(self, record: Record) -> bool:
        """Put back `record` (read from Firestore) unless Redis holds its id (restore.lua says
        how each state comes back). True when it was put back."""
        flat = [x for kv in record.redis_fields().items() for x in kv]
        keys = [self.record_key(record.request_id), self.k_queue, self.k_seq, self.k_counts, self.k_outbox,
                self.token_key(record.callback_token_sha256), self.session_key(record.session_id), self.k_leases]
        return bool(self._run("restore", keys, record.request_id, record.state, record.version, *flat))

    def unfinish(self, request_id: str) -> None:
        """Take `request_id` off retention's list (a restart or a delete is about to change it;
        the mirror's acknowledgement of its next finished version puts it back)."""
        self.r.zrem(self.k_finished, request_id)

    def withdraw(self, request_id: str, token_sha256: str, session_id: str, dedup_keys: Iterable[str]) -> bool:
        """Undo an accept that could not be made durable: the record goes, with everything that
        names it, if it is still as the enqueue left it (QUEUED, version 1). True when it went;
        False when something has moved it on (dispatch took it: it is accepted after all)."""
        keys = [self.record_key(request_id), self.k_queue, self.k_counts, self.k_outbox,
                self.token_key(token_sha256), self.session_key(session_id), *map(self.dedup_key, dedup_keys)]
        return bool(self._run("withdraw", keys, request_id))

    def missing(self, request_ids: Iterable[str]) -> list[str]:
        """Those of `request_ids` Redis holds no record of."""
        ids = list(request_ids)
        pipe = self.r.pipeline(transaction=False)
        for rid in ids:
            pipe.exists(self.record_key(rid))
        return [rid for rid, there in zip(ids, pipe.execute(), strict=True) if not there]
