-- A drain task takes due (aggregate, coach) pairs of one shard (RecomputeScheduler.claim).
-- KEYS: due, not_before, drain_scheduled, commits, claim, claims, coach_cost (one shard: one
--       hash slot)
-- ARGV: batch (coaches), window_ms, stale_ms, lease_ms, coach_share, task_id, then every
--       aggregate name
-- Returns {countdown_ms of a follow-up drain to send (-1: none), window_ms of the coach taken
-- alone (-1: none), n, n costly coaches (a measured cost: their window is widened), member,
-- commit, ...}
-- Members are "coach|aggregate". Up to `batch` coaches are taken, each with every pair of it
-- that is due (so one drain answers the whole change). A coach one recompute of which takes
-- longer than the window (measured cost > window_ms) is taken alone, and only when it is the
-- oldest due: met behind others it is left to the follow-up drain, so it never holds them
-- behind it. Each
-- pair taken may run again no earlier than now + its coach's window (not_before). The pairs
-- returned are the task's whole claim: those taken now plus any an earlier delivery of the
-- same task id took.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local batch, window, stale, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
local share = tonumber(ARGV[5])
local function window_of(coach)  -- {max(window, cost / share), at most stale (whole ms),
    -- whether one recompute of it takes longer than the window}
    local cost = tonumber(redis.call('HGET', KEYS[7], coach) or '')
    if not cost then
        return window, false
    end
    return math.floor(math.min(stale, math.max(window, cost / 1000 / share))), cost > window * 1000
end
local coaches, windows, seen, offset, alone = {}, {}, {}, 0, -1
while #coaches < batch and alone < 0 do  -- oldest due first
    local chunk = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', offset, batch)
    for _, member in ipairs(chunk) do
        local coach = string.match(member, '^[^|]+')
        if not seen[coach] then
            seen[coach] = true
            local coach_window, alone_only = window_of(coach)
            if alone_only then
                if #coaches == 0 then
                    coaches[1], windows[coach], alone = coach, coach_window, coach_window
                    break
                end
            elseif #coaches < batch then
                coaches[#coaches + 1] = coach
                windows[coach] = coach_window
            end
        end
    end
    if #chunk < batch then
        break
    end
    offset = offset + #chunk
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local taken = {}
for _, coach in ipairs(coaches) do
    for i = 7, #ARGV do
        local member = coach .. '|' .. ARGV[i]
        local due = redis.call('ZSCORE', KEYS[1], member)
        if due and tonumber(due) <= now then
            taken[#taken + 1] = member
            redis.call('ZADD', KEYS[2], now + windows[coach], member)
        end
    end
end
for _, member in ipairs(taken) do
    local commit = redis.call('HGET', KEYS[4], member) or ''
    redis.call('HSETNX', KEYS[5], member, commit)
end
if #taken > 0 then
    redis.call('ZREM', KEYS[1], unpack(taken))
    redis.call('HDEL', KEYS[4], unpack(taken))
end
if redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('ZADD', KEYS[6], now + lease, ARGV[6])  -- the lease: renewed while it recomputes
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
local held = redis.call('HGETALL', KEYS[5])
local costly, checked = {}, {}
for i = 1, #held, 2 do
    local coach = string.match(held[i], '^[^|]+')
    if not checked[coach] then
        checked[coach] = true
        if redis.call('HEXISTS', KEYS[7], coach) == 1 then
            costly[#costly + 1] = coach
        end
    end
end
local result = {countdown, math.floor(alone), #costly}
for _, coach in ipairs(costly) do
    result[#result + 1] = coach
end
for i = 1, #held do
    result[#result + 1] = held[i]
end
return result
