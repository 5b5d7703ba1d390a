-- Undo an accept that could not be made durable (functions.intake.accept): the record and every
-- key that names it go, if it is still exactly as enqueue.lua left it (QUEUED, version 1), so the
-- caller's retry creates the request again and gets its callback token.
-- KEYS[1]    req:{id}       the record's HASH
-- KEYS[2]    queue          ZSET of QUEUED ids
-- KEYS[3]    counts         HASH state -> records
-- KEYS[4]    outbox         HASH id -> version not yet mirrored
-- KEYS[5]    token:{sha}    callback token digest -> id
-- KEYS[6]    session:{sid}  the session's ZSET of ids
-- KEYS[7..]  dedup:{key}    the dedup keys the enqueue set
-- ARGV[1]    the request id
-- Returns 1 when it went, 0 when it is not as the enqueue left it (or gone).
local rk, id = KEYS[1], ARGV[1]
if redis.call('HGET', rk, 'state') ~= 'QUEUED' or redis.call('HGET', rk, 'version') ~= '1' then return 0 end
redis.call('DEL', rk)
redis.call('ZREM', KEYS[2], id)
redis.call('HINCRBY', KEYS[3], 'QUEUED', -1)
redis.call('HDEL', KEYS[4], id)
if redis.call('GET', KEYS[5]) == id then redis.call('DEL', KEYS[5]) end
redis.call('ZREM', KEYS[6], id)
for i = 7, #KEYS do
  if redis.call('GET', KEYS[i]) == id then redis.call('DEL', KEYS[i]) end
end
return 1
