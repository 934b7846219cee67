-- Requeue the coaches of claims older than stale_ms: their task vanished (sweep).
-- KEYS: due, drain_scheduled, claims
-- ARGV: stale_ms, claim key prefix (the claim key of a task is prefix .. task_id)
-- Returns {requeued, countdown_ms of the drain to send (-1: none)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[1])
local requeued = 0
for _, task in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - stale)) do
    local claim = ARGV[2] .. task
    for _, coach in ipairs(redis.call('HKEYS', claim)) do
        redis.call('ZADD', KEYS[1], 'NX', now, coach)
        requeued = requeued + 1
    end
    redis.call('DEL', claim)
    redis.call('ZREM', KEYS[3], task)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local countdown = -1
if nxt[1] then
    local scheduled = redis.call('GET', KEYS[2])
    if not scheduled or tonumber(nxt[2]) < now - stale then
        local at = math.max(tonumber(nxt[2]), now)
        redis.call('SET', KEYS[2], at, 'PX', at - now + stale)
        countdown = at - now
    end
end
return {requeued, countdown}
