"""Checks shared by the end-to-end tests: is what Redis holds what the oracle says?"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import psycopg
import redis

from config import Settings
from devtools.processes import wait_for
from pipeline import scheduler
from pipeline.aggregates import CRITICAL
from pipeline.read import read_aggregate
from pipeline.scheduler import RecomputeScheduler
from tests import oracle
from tests.datasets import read_back

CRITICAL_NAMES = tuple(a.name for a in CRITICAL)


def snapshot(database_url: str) -> oracle.Dataset:
    with psycopg.connect(database_url) as conn:
        return read_back(conn)


def mismatches(
    database_url: str,
    client: redis.Redis,
    coaches: Iterable[UUID],
    aggregates: Iterable[str] = CRITICAL_NAMES,
) -> list[str]:
    """Keys whose stored value differs from the oracle over the current rows (or is missing).

    The oracle is evaluated at the stored value's own `as_of`, so time-dependent fields agree.
    """
    data = snapshot(database_url)
    wrong = []
    for coach in coaches:
        for name in aggregates:
            stored = read_aggregate(client, coach, name)
            if stored is None:
                wrong.append(f"{name}:{coach}: missing")
            elif stored.value != oracle.expected(data, name, coach, stored.as_of):
                wrong.append(f"{name}:{coach}: stale (version {stored.version})")
    return wrong


def idle(client: redis.Redis) -> bool:
    """No recompute is pending or claimed."""
    return scheduler.idle(client, Settings.model_fields["scheduler_shards"].default)


def settle(
    database_url: str, client: redis.Redis, coaches: list[UUID] | None = None, timeout: float = 60
) -> None:
    """Wait until nothing is pending and every coach's stored aggregates equal the oracle.

    On a timeout the message says what is wrong then, not what was wrong when the wait began.
    """
    chosen = coaches if coaches is not None else coach_ids(database_url)
    try:
        wait_for(
            lambda: idle(client) and not mismatches(database_url, client, chosen),
            timeout,
            interval=0.2,
        )
    except AssertionError:
        wrong = mismatches(database_url, client, chosen)
        pending = "" if idle(client) else "; recomputes still pending or claimed"
        raise AssertionError(
            f"timed out after {timeout} s waiting for the aggregates to match the oracle: "
            f"{len(wrong)} wrong {wrong[:5]}{pending}"
        ) from None


def coach_ids(database_url: str) -> list[UUID]:
    with psycopg.connect(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM users WHERE role = 'coach'")]


def widen(chosen: RecomputeScheduler, coach: UUID, seconds: float, drains: int) -> None:
    """`drains` drains of `coach` alone, each `seconds` long, charged to it on release."""
    shard = chosen.shard_of(coach)
    for n in range(drains):
        chosen.release(shard, f"cost-{coach}-{n}", [coach], seconds)
