-- One call by a caller, if its sliding window has room (functions/rate_limit.py).
-- KEYS[1]  rl:{caller hash}  ZSET of the accepted calls' ids by time (ms)
-- ARGV[1]  the most calls in a window
-- ARGV[2]  the window (ms)
-- ARGV[3]  this call's id (random)
-- Returns {1, calls left, 0} (counted) or {0, 0, ms until the oldest call leaves the window}.
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], nows, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, limit - n - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
