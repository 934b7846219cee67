-- Ask for a refresh of every coach's aggregate (RecomputeScheduler.request_wide).
-- KEYS: wide marker
-- ARGV: stale_ms
-- Returns 1 if this call set the marker (send the refresh), 0 if one is already pending.
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[1])) then
    return 1
end
return 0
