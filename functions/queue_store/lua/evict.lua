-- Retention: finished records mirrored before the cutoff leave Redis (Firestore keeps them, and
-- the functions read them there: functions.status.archive), with the keys that name them.
-- Prepended (functions/queue_store/store.py): terminal (core.record's states).
-- KEYS[1]  finished  ZSET of mirrored finished ids by when they finished (ms)
-- KEYS[2]  outbox    HASH id -> version not yet mirrored
-- KEYS[3]  counts    HASH state -> records
-- ARGV[1]  the cutoff (ms): records finished at or before it go
-- ARGV[2]  the most records to look at
-- ARGV[3], ARGV[4], ARGV[5]  the record, token and session key prefixes ("sp:req:", ...)
-- Returns the evicted ids.
local gone = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))) do
  local rk = ARGV[3] .. id
  local st = redis.call('HGET', rk, 'state')
  if not st or not terminal[st] then
    redis.call('ZREM', KEYS[1], id)  -- restarted since (or gone): no longer finished
  elseif redis.call('HEXISTS', KEYS[2], id) == 0 then  -- a newer version not mirrored yet waits
    local doc = cjson.decode(redis.call('HGET', rk, 'doc'))
    local tk = ARGV[4] .. doc['token_sha256']
    if redis.call('GET', tk) == id then redis.call('DEL', tk) end
    redis.call('ZREM', ARGV[5] .. doc['session_id'], id)
    redis.call('HINCRBY', KEYS[3], st, -1)
    redis.call('DEL', rk)
    redis.call('ZREM', KEYS[1], id)
    gone[#gone + 1] = id
  end
end
return gone
