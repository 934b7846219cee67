-- The claimed coaches are stored: forget the claim, and update each coach's measured cost
-- (RecomputeScheduler.release).
-- KEYS: claim, claims, coach_cost
-- ARGV: task_id, elapsed_us (the drain's recompute, -1: not measured), window_ms,
--       coach_share, then the coaches of the claim
-- Returns {coach, cost_us, ...} for each coach whose window started (cost_us > 0) or stopped
-- (cost_us 0) being widened by its cost.
-- A coach's cost (µs) is an EWMA, weight 1/4, of the drain's time divided by its coaches,
-- kept only while cost / coach_share exceeds window_ms (a coach without one starts from that
-- threshold); integer µs, so the arithmetic is exact.
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local elapsed, window, share = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local coaches = #ARGV - 4
local changes = {}
if elapsed < 0 or coaches == 0 then
    return changes
end
local sample = math.floor(elapsed / coaches)
local threshold = window * share * 1000
for i = 5, #ARGV do
    local coach = ARGV[i]
    local old = tonumber(redis.call('HGET', KEYS[3], coach) or '')
    local prior = old or math.floor(threshold)
    local cost = prior + math.floor((sample - prior) / 4)
    if cost > threshold then
        redis.call('HSET', KEYS[3], coach, string.format('%d', cost))
        if not old then
            changes[#changes + 1] = coach
            changes[#changes + 1] = cost
        end
    elseif old then
        redis.call('HDEL', KEYS[3], coach)
        changes[#changes + 1] = coach
        changes[#changes + 1] = 0
    end
end
return changes
