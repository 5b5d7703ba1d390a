-- Create a QUEUED record, unless the id exists or a dedup key names a live earlier request.
-- KEYS[1]    req:{id}       the record's HASH
-- KEYS[2]    queue          ZSET of QUEUED ids by score(priority, seq)
-- KEYS[3]    seq            arrival counter
-- KEYS[4]    counts         HASH state -> records
-- KEYS[5]    outbox         HASH id -> version not yet mirrored
-- KEYS[6]    token:{sha}    callback token digest -> id
-- KEYS[7]    rl:{caller}    the caller's rate-limit window (window.lua); unused when ARGV[7] is 0
-- KEYS[8..]  dedup:{key}    one per entry of ARGV[3], in its order
-- ARGV[1]    the request id
-- ARGV[2]    priority (0 highest)
-- ARGV[3]    "ttl:sticky,..." per dedup key: seconds it is kept; 1 when a FAILED or CANCELLED
--            request still answers for it
-- ARGV[4]    the record key prefix ("sp:req:")
-- ARGV[5]    doc: the record's unchanging part as JSON text, stored as is (never decoded here)
-- ARGV[6]    session:{sid}  the session's ZSET of ids by seq
-- ARGV[7]    the caller's limit of calls per window (0: no limit), ARGV[8] the window (ms),
--            ARGV[9] this call's id in the window
-- Returns {'new', id, state, calls left} (created, or the id already existed), {'dup', earlier
-- id, its state, calls left} or {'limited', '', '', ms until a call is allowed}.
local DEDUP = 8  -- the first dedup key: a check with keys of its own takes the slots before it
local id = ARGV[1]
local left = 0

-- 0. The caller's rate limit: a call over it changes nothing else. One script for the limit and
-- the accept: one round trip and one fsync per trigger.
local limit = tonumber(ARGV[7])
if limit > 0 then
  local hit = window_hit(KEYS[7], limit, tonumber(ARGV[8]), ARGV[9])
  if hit[1] == 0 then return {'limited', '', '', hit[3]} end
  left = hit[2]
end

-- 1. The same id again (a retried call): what it is now.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'new', id, redis.call('HGET', KEYS[1], 'state'), left}
end

-- 2. A duplicate: a dedup key naming a request that still answers for it.
local meta = {}
for ttl, sticky in string.gmatch(ARGV[3], '(%d+):(%d)') do meta[#meta + 1] = {ttl, sticky} end
for i = DEDUP, #KEYS do
  local other = redis.call('GET', KEYS[i])
  if other then
    local st = redis.call('HGET', ARGV[4] .. other, 'state')
    if st and (meta[i - DEDUP + 1][2] == '1' or (st ~= 'FAILED' and st ~= 'CANCELLED')) then
      return {'dup', other, st, left}
    end
  end
end

-- 3. Create it: the record, its place in the queue and the session, the keys that name it.
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', ARGV[6], seq, id)
redis.call('HSET', KEYS[1], 'request_id', id, 'state', 'QUEUED', 'priority', ARGV[2], 'created_at', nows,
           'updated_at', nows, 'seq', seq, 'version', 1, 'attempts', 0, 'doc', ARGV[5])
redis.call('ZADD', KEYS[2], score(ARGV[2], seq), id)
for i = DEDUP, #KEYS do redis.call('SET', KEYS[i], id, 'EX', meta[i - DEDUP + 1][1]) end
redis.call('SET', KEYS[6], id)
redis.call('HINCRBY', KEYS[4], 'QUEUED', 1)
redis.call('HSET', KEYS[5], id, 1)
return {'new', id, 'QUEUED', left}
