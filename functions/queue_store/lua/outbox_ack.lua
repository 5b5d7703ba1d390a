-- A version is in Firestore: its outbox entry goes, unless a newer version arrived meanwhile.
-- KEYS[1]  outbox  HASH id -> version not yet mirrored
-- ARGV[1]  the request id
-- ARGV[2]  the version mirrored
-- Returns 1 when the entry went, else 0.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
