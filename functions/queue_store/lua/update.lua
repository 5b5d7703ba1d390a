-- Apply one validated status patch (`PUT /status/{id}`) as one atomic step.
-- Prepended (functions/queue_store/store.py): legal, terminal (core.record's states), max_warnings,
-- max_metrics (its bounds) and best_effort (functions.stages).
-- KEYS[1]  req:{id}  the record's HASH
-- KEYS[2]  queue     ZSET of QUEUED ids
-- KEYS[3]  leases    ZSET of PROCESSING ids by lease expiry (ms)
-- KEYS[4]  counts    HASH state -> records
-- KEYS[5]  outbox    HASH id -> version not yet mirrored
-- ARGV[1]  the request id
-- ARGV[2]  the patch, JSON: state, stage, stage_state, batch_job, machine, progress, outputs, error,
--          warnings, metrics, execution (each optional; Python has set progress[stage] = 1 for a stage
--          done, and made machine core.pricing.Machine's JSON)
-- ARGV[3]  the lease (ms) a PROCESSING request holds from now
-- Returns {'ok', state, version, the record's fields}, {'missing'}, {'conflict', state} or
-- {'conflict', state, the FAILED stage that is not best-effort} (refused COMPLETED).
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
local function stored(field, empty) return cjson.decode(redis.call('HGET', rk, field) or empty) end
local stage = p['stage']
if stage then set('stage', stage) end
-- An error or warning without a stage is the update's stage, or else the record's current one.
local here = stage or redis.call('HGET', rk, 'stage')
if not here or here == '' then here = cjson.null end
local stages_now = nil  -- the stages as this update leaves them, when it changes them
if p['stage_state'] or p['batch_job'] or p['machine'] then
  -- A stage's times: started when it turns RUNNING (a rerun starts afresh), finished when it
  -- turns anything else (started then too, if it never ran). Redis TIME, so not Python's.
  local stages = stored('stages', '{}')
  local st = stages[stage] or {}
  local ss = p['stage_state']
  if ss and st['state'] ~= ss then
    st['state'] = ss
    st['started_at'] = (ss ~= 'RUNNING' and st['started_at']) or now
    st['finished_at'] = ss ~= 'RUNNING' and now or nil
  end
  if p['batch_job'] then st['batch_job'] = p['batch_job'] end
  if p['machine'] then st['machine'] = p['machine'] end  -- what its job runs on (core.pricing)
  stages[stage] = st
  stages_now = stages
  set('stages', cjson.encode(stages))
end
for _, field in ipairs({'progress', 'outputs'}) do  -- merged by key
  if p[field] then
    local m = stored(field, '{}')
    for k, v in pairs(p[field]) do m[k] = v end
    set(field, cjson.encode(m))
  end
end
if p['error'] then
  if not p['error']['stage'] then p['error']['stage'] = here end
  set('error', cjson.encode(p['error']))
end
if p['warnings'] then
  -- appended, one per (stage, code): a retried update adds nothing
  local ws = stored('warnings', '[]')
  local seen = {}
  for _, w in ipairs(ws) do seen[tostring(w['stage']) .. '|' .. w['code']] = true end
  for _, w in ipairs(p['warnings']) do
    if not w['stage'] then w['stage'] = here end
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
  local ms = stored('metrics', '{}')
  for s, kv in pairs(p['metrics']) do
    local m = ms[s] or {}
    local n = 0
    for _ in pairs(m) do n = n + 1 end
    for k, v in pairs(kv) do
      if m[k] ~= nil or n < max_metrics then
        if m[k] == nil then n = n + 1 end
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
  for s, st in pairs(stages_now or stored('stages', '{}')) do
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
