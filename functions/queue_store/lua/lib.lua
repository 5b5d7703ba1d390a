-- Prepended to every script (functions/queue_store/store.py `lua`): the clock and the queue's score.
-- The clock is Redis TIME, so every function instance shares one; ms since the epoch.
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
local nows = string.format('%.0f', now)

-- A QUEUED id's score in the queue ZSET: priority first (0 highest), then arrival (seq, FIFO).
-- As integer text: ZADD and ZCOUNT read it exactly (seq stays below 1e14).
local function score(priority, seq)
  return string.format('%.0f', tonumber(priority) * 1e14 + tonumber(seq))
end
