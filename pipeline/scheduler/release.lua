-- The claimed coaches are stored: forget the claim (RecomputeScheduler.release).
-- KEYS: claim, claims
-- ARGV: task_id
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
