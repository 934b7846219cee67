-- Freshness tickets (pipeline.freshness): per coach and commit, the aggregates still to store.
-- Every key of one call is one coach's (the `{coach}` hash tag): one slot on a Redis Cluster.
--
-- register   KEYS: the coach's version counter, its open hash, one pending zset per aggregate
--            ARGV: 'register', commit_ms, ttl_ms
--   Pending zset: commit_ms scored by the coach's version counter at registration. Any
--   recompute of the coach that takes a higher version took it after this registration, which
--   the listener makes after the commit is visible, so its snapshot sees the change: no clock
--   is compared.
--   Open hash: commit_ms -> aggregates still pending; 's:' .. commit_ms -> latest store (ms).
--
-- mark       KEYS: per aggregate of one coach: aggregate hash, pending zset, open hash
--            ARGV: 'mark', version, stored_ms
--   Only a write that is still the stored one (its version) marks: a rejected or overwritten
--   write leaves the tickets to the write that won. Returns the latencies (ms) of the tickets
--   it completed (pipeline.freshness counts them for `coachpipe status`).

local function register()
    local version = tonumber(redis.call('GET', KEYS[1]) or '0')
    local commit, ttl = ARGV[2], tonumber(ARGV[3])
    local added = 0
    for i = 3, #KEYS do
        added = added + redis.call('ZADD', KEYS[i], 'GT', version, commit)
        redis.call('PEXPIRE', KEYS[i], ttl)
    end
    if added > 0 then
        redis.call('HINCRBY', KEYS[2], commit, added)
    end
    redis.call('PEXPIRE', KEYS[2], ttl)
    return added
end

local function mark()
    local version, stored = tonumber(ARGV[2]), tonumber(ARGV[3])
    local latencies = {}
    for i = 1, #KEYS, 3 do
        local current = redis.call('HGET', KEYS[i], 'version')
        if current and tonumber(current) == version then
            local pending, open = KEYS[i + 1], KEYS[i + 2]
            local done = redis.call('ZRANGEBYSCORE', pending, '-inf', '(' .. version)
            if #done > 0 then
                redis.call('ZREMRANGEBYSCORE', pending, '-inf', '(' .. version)
            end
            for _, commit in ipairs(done) do
                local left = redis.call('HGET', open, commit)
                if left then
                    local latest = math.max(stored, tonumber(redis.call('HGET', open, 's:' .. commit) or stored))
                    if tonumber(left) <= 1 then
                        redis.call('HDEL', open, commit, 's:' .. commit)
                        latencies[#latencies + 1] = math.max(latest - tonumber(commit), 0)
                    else
                        redis.call('HSET', open, commit, tonumber(left) - 1, 's:' .. commit, latest)
                    end
                end
            end
        end
    end
    return latencies
end

if ARGV[1] == 'register' then
    return register()
end
return mark()
