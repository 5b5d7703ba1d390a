-- Renew a lease only if it has expired (dispatch found the request's execution still running).
-- KEYS[1]  req:{id}  the record's HASH
-- KEYS[2]  leases    ZSET of PROCESSING ids by lease expiry (ms)
-- ARGV[1]  the request id
-- ARGV[2]  the new lease (ms from now)
-- Returns 1 when renewed, else 0.
local lease = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not lease or tonumber(lease) > now or redis.call('HGET', KEYS[1], 'state') ~= 'PROCESSING' then return 0 end
local exp = string.format('%.0f', now + tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], exp, ARGV[1])
redis.call('HSET', KEYS[1], 'lease_expires_at', exp)
return 1
