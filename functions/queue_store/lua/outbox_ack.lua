-- A version is in Firestore: its outbox entry goes, unless a newer version arrived meanwhile. A
-- finished record whose final version is now mirrored joins `finished`, for retention (evict.lua).
-- Prepended (functions/queue_store/store.py): terminal (core.record's states).
-- KEYS[1]  outbox    HASH id -> version not yet mirrored
-- KEYS[2]  req:{id}  the record's HASH
-- KEYS[3]  finished  ZSET of mirrored finished ids by when they finished (ms)
-- ARGV[1]  the request id
-- ARGV[2]  the version mirrored
-- Returns 1 when the entry went, else 0.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local st = redis.call('HGET', KEYS[2], 'state')
if st and terminal[st] then redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[2], 'updated_at'), ARGV[1]) end
return 1
