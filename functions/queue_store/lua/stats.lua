-- The queue's figures in one consistent read.
-- KEYS[1]  counts  HASH state -> records
-- KEYS[2]  queue   ZSET of QUEUED ids by score
-- KEYS[3]  leases  ZSET of PROCESSING ids
-- ARGV[1]  the record key prefix ("sp:req:")
-- ARGV[2]  the highest priority number (the lowest priority)
-- Returns {counts as HGETALL, QUEUED per priority 0.., the oldest QUEUED created_at (-1: none),
-- running, now}.
local byprio = {}
local oldest = -1
for p = 0, tonumber(ARGV[2]) do
  local lo, hi = score(p, 0), '(' .. score(p + 1, 0)
  local n = redis.call('ZCOUNT', KEYS[2], lo, hi)
  byprio[#byprio + 1] = n
  if n > 0 then
    local first = redis.call('ZRANGEBYSCORE', KEYS[2], lo, hi, 'LIMIT', 0, 1)
    local c = tonumber(redis.call('HGET', ARGV[1] .. first[1], 'created_at'))
    if c and (oldest < 0 or c < oldest) then oldest = c end
  end
end
return {redis.call('HGETALL', KEYS[1]), byprio, oldest, redis.call('ZCARD', KEYS[3]), nows}
