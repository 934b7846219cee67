-- Mark (aggregate, coach) pairs of one shard due (RecomputeScheduler.request).
-- KEYS: due, not_before, drain_scheduled, commits (one shard: one hash slot)
-- ARGV: stale_ms, late_ms, then (member "coach|aggregate", commit_ms or "") pairs
-- Returns {enqueued, suppressed, countdown_ms of the drain to send (-1: none)}
-- A pair is due at once, or when the window its last claim set (not_before) has passed.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[1])
local late = tonumber(ARGV[2])
local enqueued, suppressed, earliest = 0, 0, nil
for i = 3, #ARGV, 2 do
    local member, commit = ARGV[i], ARGV[i + 1]
    local pending = redis.call('ZSCORE', KEYS[1], member)
    if pending and now - tonumber(pending) < stale then
        suppressed = suppressed + 1
    else
        local due = now
        local after = redis.call('ZSCORE', KEYS[2], member)
        if after and tonumber(after) > now then
            due = tonumber(after)
        end
        redis.call('ZADD', KEYS[1], due, member)
        if commit ~= '' then
            redis.call('HSETNX', KEYS[4], member, commit)
        end
        enqueued = enqueued + 1
        if pending then
            redis.call('DEL', KEYS[3])  -- the drain that should have taken it was lost
        end
        if earliest == nil or due < earliest then
            earliest = due
        end
    end
end
local countdown = -1
local scheduled = redis.call('GET', KEYS[3])
if earliest ~= nil then
    if not scheduled or tonumber(scheduled) > earliest then
        redis.call('SET', KEYS[3], earliest, 'PX', earliest - now + stale)
        countdown = earliest - now
    end
elseif suppressed > 0 and scheduled and tonumber(scheduled) + late < now
        and #redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1) > 0 then
    -- Pairs still due long after their drain should have run: that drain was lost (its
    -- sender died between marking and sending, or the broker dropped it). Send another.
    redis.call('SET', KEYS[3], now, 'PX', stale)
    countdown = 0
end
return {enqueued, suppressed, countdown}
