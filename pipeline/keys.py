"""Every Redis key and channel name the pipeline uses, and nothing else.

Redis Cluster runs a script or a transaction only on keys of one hash slot, and the slot of a
key with a `{tag}` is the tag's. So each key below carries the tag of what it is read with:

- a coach's stored aggregates, its version counter, its update channel and its freshness tickets
  share the `{coach id}` tag: the compare-and-set, the sharded notice and the freshness marks
  are one-slot scripts, and coaches (thousands) spread evenly over every node;
- the recompute scheduler's keys carry the tags `pipeline.scheduler` chooses;
- the few pieces of process bookkeeping that are read together (listener health, beat's
  schedule and lock) share one tag each; they are small and written every few seconds, so one
  slot holds them;
- everything else is a single key read alone, untagged.
"""

from __future__ import annotations

from uuid import UUID

PREFIX = "coachpipe"

# Stored aggregates and their update notices (pipeline.store, pipeline.read): the `{coach}` tag.


def aggregate(name: str, coach_id: UUID | str) -> str:
    """Hash holding one coach's aggregate: version, computed_at, schema, value."""
    return f"{PREFIX}:agg:{{{coach_id}}}:{name}"


def version(coach_id: UUID | str) -> str:
    """Counter: the coach's versions, taken before each snapshot of the coach is read. It lives
    beside the coach's values, so a failover that loses a write loses the counter's increment
    with it (one replication stream), and never leaves a value ahead of its counter."""
    return f"{PREFIX}:version:{{{coach_id}}}"


def updates_channel(coach_id: UUID | str) -> str:
    """Channel receiving a small notice for every stored write of a coach's aggregate (a shard
    channel on a Redis Cluster, in the coach's slot)."""
    return f"{PREFIX}:updates:{{{coach_id}}}"


def coach_of_updates_channel(channel: str) -> str:
    """The coach id of an `updates_channel` name."""
    return channel.removeprefix(f"{PREFIX}:updates:").strip("{}")


UPDATES_PATTERN = f"{PREFIX}:updates:*"
"""Every coach's updates channel, for a pattern subscription on one Redis (a Cluster's shard
channels take no patterns: there a reader subscribes to the coaches it watches)."""

# The recompute scheduler (pipeline.scheduler: see its state table). Its keys are sharded by
# coach: the keys of one shard share the hash tag `{s<shard>}`, so each of its Lua scripts
# touches one Redis Cluster hash slot.


def _shard_tag(shard: int) -> str:
    return f"{{s{shard}}}"


def due(shard: int) -> str:
    """Sorted set: "coach|aggregate" → when its recompute is due (ms). Membership is the
    pending marker."""
    return f"{PREFIX}:due:{_shard_tag(shard)}"


def commits(shard: int) -> str:
    """Hash: "coach|aggregate" → commit time (ms) of the oldest change its pending recompute
    answers."""
    return f"{PREFIX}:commits:{_shard_tag(shard)}"


def not_before(shard: int) -> str:
    """Sorted set: "coach|aggregate" → the earliest time its next recompute may start (ms): its
    last claim plus the coach's window; pruned once passed."""
    return f"{PREFIX}:notbefore:{_shard_tag(shard)}"


def coach_cost(shard: int) -> str:
    """Hash: coach → its measured recompute cost (µs, an EWMA of drain time per coach), only
    for coaches whose window it widens."""
    return f"{PREFIX}:cost:{_shard_tag(shard)}"


def drain_scheduled(shard: int) -> str:
    """String: when the earliest enqueued drain task of this shard will run (ms)."""
    return f"{PREFIX}:drain:{_shard_tag(shard)}"


def claim(shard: int, task_id: str) -> str:
    """Hash: "coach|aggregate" → commit ms, the pairs one drain task took; kept until it stores
    them."""
    return f"{PREFIX}:claim:{_shard_tag(shard)}:{task_id}"


def claims(shard: int) -> str:
    """Sorted set: task id → when its lease expires (ms), so a sweep can take back the claims
    of dead tasks."""
    return f"{PREFIX}:claims:{_shard_tag(shard)}"


SHARDS_SEEN = f"{PREFIX}:shards-seen"
"""String: the most scheduler shards any process has used (`SCHEDULER_SHARDS`, recorded at its
first request or sweep), so a deployment that lowers the setting still sweeps and drains the
shards it no longer uses."""


def wide_pending(name: str) -> str:
    """Marker of a pending refresh of every coach's aggregate (events without a coach id)."""
    return f"{PREFIX}:wide:{{{name}}}"


# Listener health (pipeline.health): one `{listeners}` tag, read together with MGET.
LISTENERS = f"{PREFIX}:{{listeners}}"


def listener(listener_id: str) -> str:
    return f"{PREFIX}:{{listeners}}:{listener_id}"


def source_last_event(source: str) -> str:
    """Commit time (ISO) of the newest event a source delivered: where catch-up starts."""
    return f"{PREFIX}:source:{source}:last-event"


def slot_recreations(slot: str) -> str:
    """Hash: how often the listener replaced replication slot `slot`, the last time and reason,
    and `pending` (the reason) until the refresh of every coach that answers it is enqueued."""
    return f"{PREFIX}:slot:{slot}:recreations"


REALTIME_STATUS = f"{PREFIX}:realtime:status"
REDIS_EPOCH = f"{PREFIX}:redis:epoch"
"""The data store's failover epoch beat saw last (pipeline.redis_epoch)."""


FAILOVER_FENCE = f"{PREFIX}:redis:failover-fence"
"""Set while beat waits for a failover of the data store to be fenced: when it was seen (Unix
seconds; pipeline.redis_fencing)."""


def shard_epoch(tag: str) -> str:
    """On a Redis Cluster: the epoch beat saw last of the master that serves `{tag}`'s slot
    (one such key on each master, `pipeline.redis_epoch`)."""
    return f"{REDIS_EPOCH}:{{{tag}}}"


# Beat bookkeeping (tasks.jobs).


def clock_last_tick(name: str) -> str:
    """Database time (ISO) up to which the clock tick of an aggregate has looked."""
    return f"{PREFIX}:clock:last-tick:{name}"


LAST_REFRESH = f"{PREFIX}:refresh:last"

# Consistency audit (pipeline.audit).
AUDIT_LAST = f"{PREFIX}:audit:last"
"""JSON summary of the last audit pass (checked, consistency, mismatches, oldest stale)."""
AUDIT_CURSOR = f"{PREFIX}:audit:cursor"
"""Id of the last coach the sampling audit visited; the next sample starts after it."""

# Freshness tickets (pipeline.freshness): keys of one coach share the `{coach}` hash tag.


def freshness_open(coach_id: UUID | str) -> str:
    """Hash: commit ms → aggregates of that change still to store; `s:<commit ms>` → latest
    store (ms) among those already stored."""
    return f"{PREFIX}:fresh:{{{coach_id}}}:open"


def freshness_pending(coach_id: UUID | str, name: str) -> str:
    """Sorted set: commit ms of the coach's changes waiting for this aggregate, scored by the
    coach's version counter when they were registered."""
    return f"{PREFIX}:fresh:{{{coach_id}}}:pending:{name}"


def freshness_minute(minute: int) -> str:
    """Hash: log-scale latency bucket → changes completed in this minute (epoch minutes)."""
    return f"{PREFIX}:freshness:{minute}"


"""Hash: aggregate name (or `LAST_REFRESH_FALLBACK`) → unix time of its last bulk refresh."""
LAST_REFRESH_FALLBACK = "fallback"
"""The field of `LAST_REFRESH` stamped by every fallback poll."""

REDBEAT_PREFIX = f"{PREFIX}:{{redbeat}}"
"""Prefix of celery-redbeat's schedule and lock keys (its `redbeat_key_prefix`): one `{redbeat}`
tag, since redbeat reads its schedule and entries together."""
