-- One call by a caller, if its sliding window has room (functions/rate_limit.py; window.lua).
-- KEYS[1]  rl:{caller hash}  ZSET of the accepted calls' ids by time (ms)
-- ARGV[1]  the most calls in a window
-- ARGV[2]  the window (ms)
-- ARGV[3]  this call's id (random)
-- Returns {1, calls left, 0} (counted) or {0, 0, ms until the oldest call leaves the window}.
return window_hit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
