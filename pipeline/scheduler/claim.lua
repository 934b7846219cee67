-- A drain task takes the due coaches of one aggregate (RecomputeScheduler.claim).
-- KEYS: due, last_run, drain_scheduled, commits, claim, claims
-- ARGV: batch, window_ms, stale_ms, task_id
-- Returns {countdown_ms of a follow-up drain to send (-1: none), coach, commit, coach, commit, ...}
-- The coaches returned are the task's whole claim: those taken now plus any an earlier delivery
-- of the same task id took.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, stale = tonumber(ARGV[2]), tonumber(ARGV[3])
local taken = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, coach in ipairs(taken) do
    local commit = redis.call('HGET', KEYS[4], coach) or ''
    redis.call('HSETNX', KEYS[5], coach, commit)
    redis.call('ZADD', KEYS[2], now, coach)
end
if #taken > 0 then
    redis.call('ZREM', KEYS[1], unpack(taken))
    redis.call('HDEL', KEYS[4], unpack(taken))
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
if redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('ZADD', KEYS[6], 'NX', now, ARGV[4])
end
local scheduled = redis.call('GET', KEYS[3])
if scheduled and tonumber(scheduled) <= now then
    redis.call('DEL', KEYS[3])
    scheduled = nil
end
local countdown = -1
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[1] then
    local at = math.max(tonumber(nxt[2]), now)
    if not scheduled or tonumber(scheduled) > at then
        redis.call('SET', KEYS[3], at, 'PX', at - now + stale)
        countdown = at - now
    end
end
local result = {countdown}
local held = redis.call('HGETALL', KEYS[5])
for i = 1, #held do
    result[#result + 1] = held[i]
end
return result
