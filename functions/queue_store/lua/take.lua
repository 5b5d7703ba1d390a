-- Hand out the first QUEUED id (priority, then FIFO) as PROCESSING with a lease.
-- KEYS[1]  queue    ZSET of QUEUED ids by score
-- KEYS[2]  leases   ZSET of PROCESSING ids by lease expiry (ms)
-- KEYS[3]  counts   HASH state -> records
-- KEYS[4]  outbox   HASH id -> version not yet mirrored
-- ARGV[1]  lease (ms)
-- ARGV[2]  the most requests that may hold a lease (0: no limit)
-- ARGV[3]  the record key prefix ("sp:req:")
-- Returns {id, version, lease expiry} or false (nothing QUEUED, or at the limit).
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
