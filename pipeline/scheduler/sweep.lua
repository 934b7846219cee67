-- Requeue the pairs of expired leases (their task died) and resend a lost drain (sweep).
-- KEYS: due, drain_scheduled, claims, commits (one shard: one hash slot)
-- ARGV: stale_ms, late_ms, claim key prefix (the claim key of a task is prefix .. task_id)
-- Returns {requeued, countdown_ms of the drain to send (-1: none)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale, late = tonumber(ARGV[1]), tonumber(ARGV[2])
local requeued = 0
for _, task in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
    local claim = ARGV[3] .. task
    local held = redis.call('HGETALL', claim)
    for i = 1, #held, 2 do
        redis.call('ZADD', KEYS[1], 'NX', now, held[i])
        local commit = tonumber(held[i + 1])  -- nil when unknown
        local pending = tonumber(redis.call('HGET', KEYS[4], held[i]) or '')
        if commit and (not pending or pending > commit) then
            redis.call('HSET', KEYS[4], held[i], commit)  -- the oldest change it answers
        end
        requeued = requeued + 1
    end
    redis.call('DEL', claim)
    redis.call('ZREM', KEYS[3], task)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local countdown = -1
if nxt[1] then
    local scheduled = redis.call('GET', KEYS[2])
    local due = tonumber(nxt[2])
    -- No drain scheduled, or the one scheduled is `late` past its time while pairs are due:
    -- it was lost (its sender died, or a killed worker holds it prefetched). Send one.
    if not scheduled or (tonumber(scheduled) + late < now and due <= now) then
        local at = math.max(due, now)
        redis.call('SET', KEYS[2], at, 'PX', at - now + stale)
        countdown = at - now
    end
end
return {requeued, countdown}
