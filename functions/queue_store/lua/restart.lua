-- A finished request runs again in its workspace: QUEUED at the back of its priority, with what
-- the last run reported cleared (the stages skip by their _SUCCESS.json what needs no rerun).
-- Prepended (functions/queue_store/store.py): restartable (core.record.RESTARTABLE_STATES).
-- KEYS[1]  req:{id}  the record's HASH
-- KEYS[2]  queue     ZSET of QUEUED ids by score
-- KEYS[3]  seq       arrival counter
-- KEYS[4]  counts    HASH state -> records
-- KEYS[5]  outbox    HASH id -> version not yet mirrored
-- ARGV[1]  the request id
-- ARGV[2]  the version it was read at
-- ARGV[3]  the new doc (JSON text; its options changed)
-- Returns {'ok', 'QUEUED', version}, {'missing'}, {'conflict', state} or {'changed', state}.
local rk, id = KEYS[1], ARGV[1]
local cur = redis.call('HGET', rk, 'state')
if not cur then return {'missing'} end
if not restartable[cur] then return {'conflict', cur} end
if redis.call('HGET', rk, 'version') ~= ARGV[2] then return {'changed', cur} end
redis.call('HDEL', rk, 'stage', 'stages', 'progress', 'outputs', 'error', 'execution', 'lease_expires_at',
           'warnings', 'metrics')
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', rk, 'state', 'QUEUED', 'updated_at', nows, 'seq', seq, 'attempts', 0, 'doc', ARGV[3])
redis.call('ZADD', KEYS[2], score(redis.call('HGET', rk, 'priority'), seq), id)
redis.call('HINCRBY', KEYS[4], cur, -1)
redis.call('HINCRBY', KEYS[4], 'QUEUED', 1)
local v = redis.call('HINCRBY', rk, 'version', 1)
redis.call('HSET', KEYS[5], id, v)
return {'ok', 'QUEUED', v}
