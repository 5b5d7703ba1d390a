-- Put back a record Redis does not hold, from its Firestore copy: one Redis lost in a failover
-- (an accept acknowledged on Firestore's word: functions.intake.accept), or an evicted finished
-- one that is asked to change (restart, delete). A QUEUED one goes back in the queue at the back
-- of its priority. A PROCESSING one comes back PROCESSING with a lease that has already expired,
-- so dispatch's next pass asks Workflows about its execution and renews it or re-queues it, as
-- for any expired lease (functions.dispatch.admission): never a second run beside a live one.
-- Its version continues Firestore's, so the mirror writes what changed.
-- Prepended (functions/queue_store/store.py): terminal (core.record's states).
-- KEYS[1]  req:{id}       the record's HASH
-- KEYS[2]  queue          ZSET of QUEUED ids by score
-- KEYS[3]  seq            arrival counter
-- KEYS[4]  counts         HASH state -> records
-- KEYS[5]  outbox         HASH id -> version not yet mirrored
-- KEYS[6]  token:{sha}    callback token digest -> id
-- KEYS[7]  session:{sid}  the session's ZSET of ids by seq
-- KEYS[8]  leases         ZSET of PROCESSING ids by lease expiry (ms)
-- ARGV[1]  the request id
-- ARGV[2]  its state in Firestore (QUEUED, PROCESSING or a finished state)
-- ARGV[3]  the version Firestore holds
-- ARGV[4..] field, value pairs of the record's hash (doc, priority, created_at, stages, ...)
-- Returns 1 when it was put back, 0 when Redis holds the id already (or the state is unknown).
local rk, id, st = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', rk) == 1 then return 0 end
if st ~= 'QUEUED' and st ~= 'PROCESSING' and not terminal[st] then return 0 end
local seq = redis.call('INCR', KEYS[3])
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', rk, 'request_id', id, 'state', st, 'seq', seq, 'updated_at', nows, unpack(fields))
if st == 'QUEUED' then
  redis.call('HDEL', rk, 'execution')
  redis.call('ZADD', KEYS[2], score(redis.call('HGET', rk, 'priority'), seq), id)
elseif st == 'PROCESSING' then
  redis.call('HSET', rk, 'lease_expires_at', nows)
  redis.call('ZADD', KEYS[8], nows, id)
end
redis.call('HSET', rk, 'version', tonumber(ARGV[3]) + 1)
redis.call('SET', KEYS[6], id)
redis.call('ZADD', KEYS[7], seq, id)
redis.call('HINCRBY', KEYS[4], st, 1)
redis.call('HSET', KEYS[5], id, tonumber(ARGV[3]) + 1)
return 1
