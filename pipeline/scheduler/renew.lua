-- A drain still recomputing extends its lease (RecomputeScheduler.renew).
-- KEYS: claims (of the shard)
-- ARGV: lease_ms, task_id
-- Returns 1 if the lease was held and is extended, 0 if a sweep took it back (its pairs are
-- due again; the values this task stores are still harmless, being versioned writes).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
    return 1
end
return 0
