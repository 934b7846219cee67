-- Raise the most scheduler shards any process swept with to this one's count; return it
-- (RecomputeScheduler.sweep).
-- KEYS: shards_seen (its own hash slot)
-- ARGV: this process's shard count
local seen = tonumber(redis.call('GET', KEYS[1]) or '0')
local mine = tonumber(ARGV[1])
if mine > seen then
    redis.call('SET', KEYS[1], mine)
    return mine
end
return seen
