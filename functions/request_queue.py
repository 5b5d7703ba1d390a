"""The request queue in Redis: records, the priority queue, leases — every change one Lua script.

Keys (prefix `sp:`):
  req:{id}      HASH   the record: `doc` (JSON of what never changes: session_id, input, options,
                       stages_requested, token digest, source, webhook_url), scalars (state,
                       priority, seq, version, attempts, times, stage, execution) and JSON text
                       for stages/progress/outputs/error/warnings/metrics
  queue         ZSET   QUEUED ids, score priority * 1e14 + arrival sequence: priority, then FIFO
  leases        ZSET   PROCESSING ids, score = lease expiry (ms); its size is "running"
  seq           STRING arrival counter
  counts        HASH   records per state
  outbox        HASH   id -> record version not yet mirrored to Firestore (see status_mirror)
  token:{sha}   STRING callback token digest -> id
  session:{sid} ZSET   the session's request ids, score = arrival sequence (`GET /requests?session_id=`)
  dedup:{key}   STRING dedup key -> id, expiring after its window (see dedup)

Scripts read the clock with Redis TIME, so every function instance shares one clock; each runs
atomically, so concurrent callers never hand out a request twice or make an illegal transition.
With AOF on, a restart keeps all of it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from functions import jobrecord, stages
from functions.dedup import DedupKey
from functions.jobrecord import Record
from functions.validation import NewRequest

PREFIX = "sp:"

# One encoder for every call: json.dumps with non-default arguments builds a new one each time.
_COMPACT = json.JSONEncoder(separators=(",", ":"))

_NOW = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
local nows = string.format('%.0f', now)
"""


def _lua_state_tables() -> str:
    """LEGAL_TRANSITIONS and TERMINAL_STATES of jobrecord, as Lua tables (one source of truth)."""
    legal = ", ".join(
        f"{src.value} = {{{', '.join(f'{t.value} = true' for t in sorted(dsts))}}}"
        for src, dsts in jobrecord.LEGAL_TRANSITIONS.items())
    terminal = ", ".join(f"{s.value} = true" for s in sorted(jobrecord.TERMINAL_STATES))
    restartable = ", ".join(f"{s.value} = true" for s in sorted(jobrecord.RESTARTABLE_STATES))
    return f"local legal = {{{legal}}}\nlocal terminal = {{{terminal}}}\nlocal restartable = {{{restartable}}}\n"


def _lua_limits() -> str:
    """jobrecord's bounds on warnings and metrics, and the best-effort stages of the registry
    (functions.stages), as Lua locals."""
    best = ", ".join(f"{s.name} = true" for s in stages.REGISTRY.values() if s.best_effort)
    return (f"local max_warnings = {jobrecord.MAX_WARNINGS}\n"
            f"local max_metrics = {jobrecord.MAX_METRICS_PER_STAGE}\n"
            f"local best_effort = {{{best}}}\n")


# KEYS: req, queue, seq, counts, outbox, token, dedup... ARGV: id, priority, "ttl:sticky,..", req prefix,
# the record's unchanging part as one JSON text (`doc`: stored as is, never decoded here), the
# session's index key.
_ENQUEUE = _NOW + """
local id = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'new', id, redis.call('HGET', KEYS[1], 'state')}
end
local meta = {}
for ttl, sticky in string.gmatch(ARGV[3], '(%d+):(%d)') do meta[#meta + 1] = {ttl, sticky} end
for i = 7, #KEYS do
  local other = redis.call('GET', KEYS[i])
  if other then
    local st = redis.call('HGET', ARGV[4] .. other, 'state')
    if st and (meta[i - 6][2] == '1' or (st ~= 'FAILED' and st ~= 'CANCELLED')) then
      return {'dup', other, st}
    end
  end
end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', ARGV[6], seq, id)
redis.call('HSET', KEYS[1], 'request_id', id, 'state', 'QUEUED', 'priority', ARGV[2], 'created_at', nows,
           'updated_at', nows, 'seq', seq, 'version', 1, 'attempts', 0, 'doc', ARGV[5])
redis.call('ZADD', KEYS[2], string.format('%.0f', tonumber(ARGV[2]) * 1e14 + seq), id)
for i = 7, #KEYS do redis.call('SET', KEYS[i], id, 'EX', meta[i - 6][1]) end
redis.call('SET', KEYS[6], id)
redis.call('HINCRBY', KEYS[4], 'QUEUED', 1)
redis.call('HSET', KEYS[5], id, 1)
return {'new', id, 'QUEUED'}
"""

# KEYS: queue, leases, counts, outbox. ARGV: lease ms, max running (0: no limit), req prefix.
_TAKE = _NOW + """
local maxr = tonumber(ARGV[2])
if maxr > 0 and redis.call('ZCARD', KEYS[2]) >= maxr then return false end
while true do
  local popped = redis.call('ZPOPMIN', KEYS[1])
  if popped[1] == nil then return false end
  local id = popped[1]
  local rk = ARGV[3] .. id
  if redis.call('HGET', rk, 'state') == 'QUEUED' then
    local exp = string.format('%.0f', now + tonumber(ARGV[1]))
    redis.call('HSET', rk, 'state', 'PROCESSING', 'updated_at', nows, 'lease_expires_at', exp)
    redis.call('HINCRBY', rk, 'attempts', 1)
    local v = redis.call('HINCRBY', rk, 'version', 1)
    redis.call('ZADD', KEYS[2], exp, id)
    redis.call('HINCRBY', KEYS[3], 'QUEUED', -1)
    redis.call('HINCRBY', KEYS[3], 'PROCESSING', 1)
    redis.call('HSET', KEYS[4], id, v)
    return {id, v, exp}
  end
  -- an entry whose record moved on (cannot happen through these scripts): drop it, look further
end
"""

# KEYS: req, queue, leases, counts, outbox. ARGV: id, patch JSON, lease ms.
_UPDATE = _NOW + _lua_state_tables() + _lua_limits() + """
local rk, id = KEYS[1], ARGV[1]
local cur = redis.call('HGET', rk, 'state')
if not cur then return {'missing'} end
local p = cjson.decode(ARGV[2])
local target = p['state']
if terminal[cur] then
  if target ~= cur then return {'conflict', cur} end
elseif target and target ~= cur and not legal[cur][target] then
  return {'conflict', cur}
end
local sets = {'updated_at', nows}
local function set(k, v) sets[#sets + 1] = k; sets[#sets + 1] = v end
local stage = p['stage']
if stage then set('stage', stage) end
local done_stage = nil
local stages_json = nil
if p['stage_state'] or p['batch_job'] then
  local stages = cjson.decode(redis.call('HGET', rk, 'stages') or '{}')
  local st = stages[stage] or {}
  local ss = p['stage_state']
  if ss and st['state'] ~= ss then
    st['state'] = ss
    if ss == 'RUNNING' then
      st['started_at'] = now
      st['finished_at'] = nil
    else
      if not st['started_at'] then st['started_at'] = now end
      st['finished_at'] = now
    end
  end
  if ss == 'SUCCEEDED' or ss == 'SKIPPED' then done_stage = stage end
  if p['batch_job'] then st['batch_job'] = p['batch_job'] end
  stages[stage] = st
  stages_json = cjson.encode(stages)
  set('stages', stages_json)
end
if p['progress'] or done_stage then
  local prog = cjson.decode(redis.call('HGET', rk, 'progress') or '{}')
  if p['progress'] then for k, v in pairs(p['progress']) do prog[k] = v end end
  if done_stage then prog[done_stage] = 1 end
  set('progress', cjson.encode(prog))
end
if p['outputs'] then
  local outs = cjson.decode(redis.call('HGET', rk, 'outputs') or '{}')
  for k, v in pairs(p['outputs']) do outs[k] = v end
  set('outputs', cjson.encode(outs))
end
if p['error'] then
  local e = p['error']
  if not e['stage'] then
    local s = stage or redis.call('HGET', rk, 'stage')
    if s and s ~= '' then e['stage'] = s else e['stage'] = cjson.null end
  end
  set('error', cjson.encode(e))
end
if p['warnings'] then
  -- appended, one per (stage, code): a retried update adds nothing
  local ws = cjson.decode(redis.call('HGET', rk, 'warnings') or '[]')
  local seen = {}
  for _, w in ipairs(ws) do seen[tostring(w['stage']) .. '|' .. w['code']] = true end
  for _, w in ipairs(p['warnings']) do
    if not w['stage'] then
      local s = stage or redis.call('HGET', rk, 'stage')
      if s and s ~= '' then w['stage'] = s else w['stage'] = cjson.null end
    end
    local key = tostring(w['stage']) .. '|' .. w['code']
    if not seen[key] and #ws < max_warnings then
      ws[#ws + 1] = w
      seen[key] = true
    end
  end
  if #ws > 0 then set('warnings', cjson.encode(ws)) end
end
if p['metrics'] then
  -- merged per stage; a stage keeps at most max_metrics keys
  local ms = cjson.decode(redis.call('HGET', rk, 'metrics') or '{}')
  for s, kv in pairs(p['metrics']) do
    local m = ms[s] or {}
    local n = 0
    for _ in pairs(m) do n = n + 1 end
    for k, v in pairs(kv) do
      if m[k] == nil then
        if n < max_metrics then
          m[k] = v
          n = n + 1
        end
      else
        m[k] = v
      end
    end
    if n > 0 then ms[s] = m end
  end
  if next(ms) then set('metrics', cjson.encode(ms)) end
end
if p['execution'] then set('execution', p['execution']) end
if target == 'COMPLETED' and cur ~= 'COMPLETED' then
  -- only a best-effort stage may have FAILED in a COMPLETED request (partial success)
  for s, st in pairs(cjson.decode(stages_json or redis.call('HGET', rk, 'stages') or '{}')) do
    if st['state'] == 'FAILED' and not best_effort[s] then return {'conflict', cur, s} end
  end
end
local new = cur
if target and target ~= cur then
  new = target
  set('state', target)
  redis.call('HINCRBY', KEYS[4], cur, -1)
  redis.call('HINCRBY', KEYS[4], target, 1)
  if cur == 'QUEUED' then redis.call('ZREM', KEYS[2], id) end
  if target == 'PROCESSING' then redis.call('HINCRBY', rk, 'attempts', 1) end
  if terminal[target] then
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', rk, 'lease_expires_at')
  end
end
if new == 'PROCESSING' then
  local exp = string.format('%.0f', now + tonumber(ARGV[3]))
  redis.call('ZADD', KEYS[3], exp, id)
  set('lease_expires_at', exp)
end
redis.call('HSET', rk, unpack(sets))
local v = redis.call('HINCRBY', rk, 'version', 1)
redis.call('HSET', KEYS[5], id, v)
return {'ok', new, v, redis.call('HGETALL', rk)}
"""

# KEYS: req, queue, leases, counts, outbox. ARGV: id, max attempts, mode ('expired'|'release'), version.
_REQUEUE = _NOW + """
local rk, id, mode = KEYS[1], ARGV[1], ARGV[3]
local score = redis.call('ZSCORE', KEYS[3], id)
local st = redis.call('HGET', rk, 'state')
if st ~= 'PROCESSING' then
  if score then redis.call('ZREM', KEYS[3], id) end
  return {'skip', st or ''}
end
if mode == 'expired' then
  if not score or tonumber(score) > now then return {'skip', st} end
elseif redis.call('HGET', rk, 'version') ~= ARGV[4] then
  return {'skip', st}
end
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', rk, 'lease_expires_at')
local attempts = tonumber(redis.call('HGET', rk, 'attempts') or '0')
local result
if mode == 'release' then
  redis.call('HINCRBY', rk, 'attempts', -1)
end
if mode == 'expired' and attempts >= tonumber(ARGV[2]) then
  local s = redis.call('HGET', rk, 'stage')
  if not s or s == '' then s = cjson.null end
  local msg = 'the request was handed out ' .. attempts .. ' times and its lease expired each time'
  redis.call('HSET', rk, 'state', 'FAILED', 'updated_at', nows,
             'error', cjson.encode({code = 'lease_expired', message = msg, stage = s}))
  redis.call('HINCRBY', KEYS[4], 'PROCESSING', -1)
  redis.call('HINCRBY', KEYS[4], 'FAILED', 1)
  result = 'failed'
else
  local score = tonumber(redis.call('HGET', rk, 'priority')) * 1e14 + tonumber(redis.call('HGET', rk, 'seq'))
  redis.call('HSET', rk, 'state', 'QUEUED', 'updated_at', nows, 'execution', '')
  redis.call('ZADD', KEYS[2], string.format('%.0f', score), id)
  redis.call('HINCRBY', KEYS[4], 'PROCESSING', -1)
  redis.call('HINCRBY', KEYS[4], 'QUEUED', 1)
  result = 'requeued'
end
local v = redis.call('HINCRBY', rk, 'version', 1)
redis.call('HSET', KEYS[5], id, v)
return {result, v}
"""

# KEYS: req, leases. ARGV: id, lease ms. Renews a lease only if it has expired (dispatch found the
# execution still running).
_RENEW_EXPIRED = _NOW + """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > now or redis.call('HGET', KEYS[1], 'state') ~= 'PROCESSING' then return 0 end
local exp = string.format('%.0f', now + tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], exp, ARGV[1])
redis.call('HSET', KEYS[1], 'lease_expires_at', exp)
return 1
"""

# KEYS: leases. ARGV: limit.
_EXPIRED = _NOW + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', nows, 'LIMIT', 0, tonumber(ARGV[1]))
"""

# KEYS: counts, queue, leases. ARGV: req prefix, highest priority number.
_STATS = _NOW + """
local byprio = {}
local oldest = -1
for p = 0, tonumber(ARGV[2]) do
  local lo = string.format('%.0f', p * 1e14)
  local hi = '(' .. string.format('%.0f', (p + 1) * 1e14)
  local n = redis.call('ZCOUNT', KEYS[2], lo, hi)
  byprio[#byprio + 1] = n
  if n > 0 then
    local first = redis.call('ZRANGEBYSCORE', KEYS[2], lo, hi, 'LIMIT', 0, 1)
    local c = tonumber(redis.call('HGET', ARGV[1] .. first[1], 'created_at'))
    if c and (oldest < 0 or c < oldest) then oldest = c end
  end
end
return {redis.call('HGETALL', KEYS[1]), byprio, oldest, redis.call('ZCARD', KEYS[3]), nows}
"""

# KEYS: req, queue, seq, counts, outbox. ARGV: id, the version it was read at, the new doc JSON.
# A finished request runs again in its workspace: QUEUED at the back of its priority, with what
# the last run reported cleared (the stages skip by their _SUCCESS.json what needs no rerun).
_RESTART = _NOW + _lua_state_tables() + """
local rk, id = KEYS[1], ARGV[1]
local cur = redis.call('HGET', rk, 'state')
if not cur then return {'missing'} end
if not restartable[cur] then return {'conflict', cur} end
if redis.call('HGET', rk, 'version') ~= ARGV[2] then return {'changed', cur} end
redis.call('HDEL', rk, 'stage', 'stages', 'progress', 'outputs', 'error', 'execution', 'lease_expires_at',
           'warnings', 'metrics')
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', rk, 'state', 'QUEUED', 'updated_at', nows, 'seq', seq, 'attempts', 0, 'doc', ARGV[3])
redis.call('ZADD', KEYS[2], string.format('%.0f', tonumber(redis.call('HGET', rk, 'priority')) * 1e14 + seq), id)
redis.call('HINCRBY', KEYS[4], cur, -1)
redis.call('HINCRBY', KEYS[4], 'QUEUED', 1)
local v = redis.call('HINCRBY', rk, 'version', 1)
redis.call('HSET', KEYS[5], id, v)
return {'ok', 'QUEUED', v}
"""

# KEYS: req, counts, outbox. ARGV: id. A finished request becomes a DELETED tombstone (its outputs
# are gone; the record answers for the id). Deleting a tombstone again changes nothing.
_TOMBSTONE = _NOW + _lua_state_tables() + """
local rk, id = KEYS[1], ARGV[1]
local cur = redis.call('HGET', rk, 'state')
if not cur then return {'missing'} end
if cur == 'DELETED' then return {'ok', cur, tonumber(redis.call('HGET', rk, 'version'))} end
if not restartable[cur] then return {'conflict', cur} end
redis.call('HDEL', rk, 'outputs')
redis.call('HSET', rk, 'state', 'DELETED', 'updated_at', nows)
redis.call('HINCRBY', KEYS[2], cur, -1)
redis.call('HINCRBY', KEYS[2], 'DELETED', 1)
local v = redis.call('HINCRBY', rk, 'version', 1)
redis.call('HSET', KEYS[3], id, v)
return {'ok', 'DELETED', v}
"""

# KEYS: outbox. ARGV: id, version.
_OUTBOX_ACK = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


class RecordNotFoundError(LookupError):
    """No record with that id."""


class IllegalTransitionError(Exception):
    """An illegal transition; `.state` is the record's current state."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class EnqueueResult:
    request_id: str
    created: bool  # False: a duplicate, `request_id` is the earlier request
    state: str


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

    def __init__(self, client: redis.Redis, prefix: str = PREFIX) -> None:
        self.r = client
        self.prefix = prefix
        self.k_queue = prefix + "queue"
        self.k_leases = prefix + "leases"
        self.k_seq = prefix + "seq"
        self.k_counts = prefix + "counts"
        self.k_outbox = prefix + "outbox"
        self._enqueue = client.register_script(_ENQUEUE)
        self._take = client.register_script(_TAKE)
        self._update = client.register_script(_UPDATE)
        self._requeue = client.register_script(_REQUEUE)
        self._renew = client.register_script(_RENEW_EXPIRED)
        self._expired = client.register_script(_EXPIRED)
        self._stats = client.register_script(_STATS)
        self._ack = client.register_script(_OUTBOX_ACK)
        self._restart = client.register_script(_RESTART)
        self._tombstone = client.register_script(_TOMBSTONE)

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
                source: str = "api", request_id: str | None = None) -> EnqueueResult:
        """Create a QUEUED record unless a dedup key names a live earlier one (then that one)."""
        rid = request_id or new_request_id()
        dedup = list(dedup)
        # Fields not yet set (stage, stages, progress, outputs, error, execution) are simply absent.
        doc = {"session_id": req.session_id, "input": req.input, "options": req.options,
               "stages_requested": list(req.stages), "token_sha256": token_sha256, "source": source}
        if req.webhook_url:
            doc["webhook_url"] = req.webhook_url
        keys = [self.record_key(rid), self.k_queue, self.k_seq, self.k_counts, self.k_outbox,
                self.token_key(token_sha256), *(self.dedup_key(k.key) for k, _ in dedup)]
        meta = ",".join(f"{max(1, int(ttl))}:{int(k.sticky)}" for k, ttl in dedup)
        kind, found_id, state = self._enqueue(keys=keys, args=[rid, req.priority, meta, self.prefix + "req:",
                                                               _COMPACT.encode(doc),
                                                               self.session_key(req.session_id)])
        return EnqueueResult(found_id, kind == "new", state)

    def take(self, lease_seconds: float, max_running: int = 0) -> Taken | None:
        """Hand out the highest-priority, oldest QUEUED request as PROCESSING with a lease.

        `max_running` > 0: only while fewer than that many requests hold a lease (admission).
        """
        got = self._take(keys=[self.k_queue, self.k_leases, self.k_counts, self.k_outbox],
                         args=[int(lease_seconds * 1000), int(max_running), self.prefix + "req:"])
        if not got:
            return None
        return Taken(got[0], int(got[1]), int(got[2]))

    # --- records --------------------------------------------------------------------------------

    def get_raw(self, request_id: str) -> dict[str, str] | None:
        h = self.r.hgetall(self.record_key(request_id))
        return h or None

    def get(self, request_id: str) -> Record | None:
        h = self.get_raw(request_id)
        return Record.from_redis(h) if h else None

    def id_for_token(self, token_sha256: str) -> str | None:
        return self.r.get(self.token_key(token_sha256))

    def update(self, request_id: str, patch: Mapping[str, Any], lease_seconds: float) -> Record:
        """Apply a validated `PUT /status` patch; the updated record. RecordNotFoundError / IllegalTransitionError."""
        res = self._update(keys=[self.record_key(request_id), self.k_queue, self.k_leases, self.k_counts,
                                 self.k_outbox],
                           args=[request_id, json.dumps(patch, separators=(",", ":")), int(lease_seconds * 1000)])
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
        return Record.from_redis(_pairs(res[3]))

    # --- leases ---------------------------------------------------------------------------------

    def expired_leases(self, limit: int = 100) -> list[str]:
        return list(self._expired(keys=[self.k_leases], args=[limit]))

    def requeue_expired(self, request_id: str, max_attempts: int) -> str:
        """'requeued', 'failed' (too many attempts) or 'skip' (not expired / not PROCESSING any more)."""
        return self._requeue(keys=self._lease_keys(request_id), args=[request_id, max_attempts, "expired", 0])[0]

    def release(self, request_id: str, version: int) -> bool:
        """Put a request just taken back at its place (its execution could not start)."""
        res = self._requeue(keys=self._lease_keys(request_id), args=[request_id, 0, "release", version])
        return res[0] == "requeued"

    def renew_expired(self, request_id: str, lease_seconds: float) -> bool:
        return bool(self._renew(keys=[self.record_key(request_id), self.k_leases],
                                args=[request_id, int(lease_seconds * 1000)]))

    def _lease_keys(self, request_id: str) -> list[str]:
        return [self.record_key(request_id), self.k_queue, self.k_leases, self.k_counts, self.k_outbox]

    def running(self) -> int:
        return int(self.r.zcard(self.k_leases))

    # --- statistics -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        counts_flat, byprio, oldest, running, now = self._stats(
            keys=[self.k_counts, self.k_queue, self.k_leases],
            args=[self.prefix + "req:", jobrecord.PRIORITY_MAX])
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
        res = self._restart(keys=[self.record_key(request_id), self.k_queue, self.k_seq, self.k_counts,
                                  self.k_outbox], args=[request_id, version, _COMPACT.encode(doc)])
        if res[0] == "missing":
            raise RecordNotFoundError(request_id)
        if res[0] == "conflict":
            raise IllegalTransitionError(res[1], f"request is {res[1]}; only a finished request can be restarted")
        if res[0] == "changed":
            raise IllegalTransitionError(res[1], "request changed meanwhile; read it and try again")

    def tombstone(self, request_id: str) -> None:
        """A finished request becomes DELETED (its outputs forgotten). RecordNotFoundError;
        IllegalTransitionError when it is still QUEUED or PROCESSING."""
        res = self._tombstone(keys=[self.record_key(request_id), self.k_counts, self.k_outbox], args=[request_id])
        if res[0] == "missing":
            raise RecordNotFoundError(request_id)
        if res[0] == "conflict":
            raise IllegalTransitionError(res[1], f"request is {res[1]}; cancel it before deleting it")

    def session_requests(self, session_id: str, limit: int = 1000) -> list[str]:
        """The session's request ids, oldest first (at most `limit`, the newest ones)."""
        return list(self.r.zrange(self.session_key(session_id), -limit, -1))

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
        return bool(self._ack(keys=[self.k_outbox], args=[request_id, version]))
