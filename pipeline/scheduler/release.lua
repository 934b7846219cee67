-- The claimed coaches are stored: forget the claim, and update each coach's measured cost
-- (RecomputeScheduler.release).
-- KEYS: claim, claims, coach_cost
-- ARGV: task_id, elapsed_us (the drain's recompute, -1: not measured), window_ms,
--       coach_share, then (coach, weight) pairs: the claim's coaches
-- Returns {coach, cost_us, ...} for each coach whose window started (cost_us > 0) or stopped
-- (cost_us 0) being widened by its cost.
-- A coach's sample is the drain's time times its weight over the weights' sum (in equal parts
-- when they sum to 0): a whale batched with cheap coaches is charged its part, not the
-- average. Its cost (µs) is an EWMA, weight 1/4, of its samples, kept only while
-- cost / coach_share exceeds window_ms (a coach without one starts from that threshold);
-- integer µs, so the arithmetic is exact.
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local elapsed, window, share = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local coaches = (#ARGV - 4) / 2
local changes = {}
if elapsed < 0 or coaches == 0 then
    return changes
end
local total = 0
for i = 6, #ARGV, 2 do
    total = total + tonumber(ARGV[i])
end
local threshold = window * share * 1000
for i = 5, #ARGV, 2 do
    local coach = ARGV[i]
    local sample = math.floor(elapsed / coaches)
    if total > 0 then
        sample = math.floor(elapsed * tonumber(ARGV[i + 1]) / total)
    end
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
