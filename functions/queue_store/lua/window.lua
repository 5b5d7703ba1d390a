-- Prepended (after lib.lua) to the scripts that count a call against its caller's sliding window
-- (sliding_window.lua, enqueue.lua): one definition of the window (functions/rate_limit.py).
-- key: rl:{caller hash}, a ZSET of the accepted calls' ids by time (ms); member: this call's id.
-- Returns {1, calls left, 0} (counted) or {0, 0, ms until the oldest call leaves the window}; a
-- refused call is not recorded.
local function window_hit(key, limit, window, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - window))
  local n = redis.call('ZCARD', key)
  if n < limit then
    redis.call('ZADD', key, nows, member)
    redis.call('PEXPIRE', key, window)
    return {1, limit - n - 1, 0}
  end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {0, 0, tonumber(oldest[2]) + window - now}
end
