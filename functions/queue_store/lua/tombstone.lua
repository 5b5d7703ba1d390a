-- A finished request becomes a DELETED tombstone (its outputs are gone; the record answers for
-- the id). Deleting a tombstone again changes nothing.
-- Prepended (functions/queue_store/store.py): restartable (core.record.RESTARTABLE_STATES).
-- KEYS[1]  req:{id}  the record's HASH
-- KEYS[2]  counts    HASH state -> records
-- KEYS[3]  outbox    HASH id -> version not yet mirrored
-- ARGV[1]  the request id
-- Returns {'ok', 'DELETED', version}, {'missing'} or {'conflict', state}.
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
