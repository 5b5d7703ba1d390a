-- Take a PROCESSING request's lease away: back to the queue at its old place, or FAILED.
-- KEYS[1]  req:{id}  the record's HASH
-- KEYS[2]  queue     ZSET of QUEUED ids by score
-- KEYS[3]  leases    ZSET of PROCESSING ids by lease expiry (ms)
-- KEYS[4]  counts    HASH state -> records
-- KEYS[5]  outbox    HASH id -> version not yet mirrored
-- ARGV[1]  the request id
-- ARGV[2]  'expired': the most times it may be handed out; at that many it FAILS instead
-- ARGV[3]  'expired' (only once its lease has expired) or 'release' (its execution could not start:
--          as if it had never been taken)
-- ARGV[4]  'release': the version it was taken at (anything else since: left alone)
-- Returns {'requeued' | 'failed', version} or {'skip', state}.
local rk, id, mode = KEYS[1], ARGV[1], ARGV[3]
local lease = redis.call('ZSCORE', KEYS[3], id)
local st = redis.call('HGET', rk, 'state')
if st ~= 'PROCESSING' then
  if lease then redis.call('ZREM', KEYS[3], id) end
  return {'skip', st or ''}
end
if mode == 'expired' then
  if not lease or tonumber(lease) > now then return {'skip', st} end
elseif redis.call('HGET', rk, 'version') ~= ARGV[4] then
  return {'skip', st}
end
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', rk, 'lease_expires_at')
local attempts = tonumber(redis.call('HGET', rk, 'attempts') or '0')
local result
if mode == 'release' then redis.call('HINCRBY', rk, 'attempts', -1) end
if mode == 'expired' and attempts >= tonumber(ARGV[2]) then
  local s = redis.call('HGET', rk, 'stage')
  if not s or s == '' then s = cjson.null end
  local msg = 'the request was handed out ' .. attempts .. ' times and its lease expired each time'
  redis.call('HSET', rk, 'state', 'FAILED', 'updated_at', nows,
             'error', cjson.encode({code = 'lease_expired', message = msg, stage = s}))
  redis.call('HINCRBY', KEYS[4], 'PROCESSING', -1)
  redis.call('HINCRBY', KEYS[4], 'FAILED', 1)
  result = 'failed'
else
  redis.call('HSET', rk, 'state', 'QUEUED', 'updated_at', nows, 'execution', '')
  redis.call('ZADD', KEYS[2], score(redis.call('HGET', rk, 'priority'), redis.call('HGET', rk, 'seq')), id)
  redis.call('HINCRBY', KEYS[4], 'PROCESSING', -1)
  redis.call('HINCRBY', KEYS[4], 'QUEUED', 1)
  result = 'requeued'
end
local v = redis.call('HINCRBY', rk, 'version', 1)
redis.call('HSET', KEYS[5], id, v)
return {result, v}
