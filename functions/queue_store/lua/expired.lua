-- The ids whose lease has expired, by Redis's clock.
-- KEYS[1]  leases  ZSET of PROCESSING ids by lease expiry (ms)
-- ARGV[1]  the most ids to return
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', nows, 'LIMIT', 0, tonumber(ARGV[1]))
