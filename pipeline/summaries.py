"""Summary tables: per-coach partial aggregates that Postgres keeps beside the five tables.

A recompute of a coach with a million sessions must not read a million rows. Every part of an
aggregate that is a count or a sum over a coach's history is kept here, as additive partial
sums keyed by coach (and by client, or by hour for the time windows), by statement-level
triggers in the writer's own transaction (`pipeline.summary_sql`). So at every snapshot the
summaries are exactly the sums over the base rows that snapshot sees: replays, reorders and
at-least-once delivery of change events cannot disturb them, a rolled-back write leaves no
trace, and the aggregates' statements read them in the same REPEATABLE READ snapshot as the
base rows.

Each summary is declared once here: its table (schema `coachpipe`, outside `public`: not in
any publication `FOR TABLES IN SCHEMA public`, not exposed by Supabase's Data API), the watched
table it sums, its key columns, and for each value column the amount one source row adds.
The triggers, the backfill and the TRUNCATE handling are all generated from these
declarations. One summary per source table keyed by coach alone is that table's **anchor**:
every trigger run locks the anchor rows of the coaches it touches (first, in coach order),
and the backfill of a coach takes the same lock, so the two never race.

Sums are kept as deltas; a latest value (a client's last completed session) is read again by
index for the keys a statement touched. Anything relative to the clock ("upcoming", "last 30
days") is read at recompute time from the summaries plus a bounded read of base rows by index
(see `pipeline.aggregates.windows`).

A client's next session is relative to the clock too, but one index probe per listed client
was 70 % of a whale's recompute. So `client_schedules` keeps, per (coach, client), the
earliest scheduled session after the moment it was read (`next_checked_at`, the writer's
`now()`). That answer stays right as the clock moves for as long as it is still ahead: a
reader whose clock is at or after `next_checked_at` and before `next_scheduled_at` takes it
(and NULL, "none ahead", stays true for ever); otherwise it probes, as before. The beat task
`advance_summaries` reads again the keys whose next session has passed (`pipeline.backfill`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlalchemy import BigInteger, Column, DateTime, MetaData, Table, Uuid
from sqlalchemy.types import UserDefinedType

SCHEMA = "coachpipe"
BUCKET = timedelta(hours=1)
"""Width of the time buckets: a window's edges read at most one bucket of base rows each."""
BUCKET_ORIGIN = "2000-01-01 00:00:00+00"
"""Buckets are `date_bin(BUCKET, moment, BUCKET_ORIGIN)`: absolute, whatever the TimeZone."""

metadata = MetaData(schema=SCHEMA)

STAMP_COLUMN = "changed"
STAMP = "pg_current_xact_id()"
"""What a summary row's stamp (`STAMP_COLUMN`) is set to by every statement that writes the row: the
writer's top-level transaction ID (`xid8`; a row's `xmin` would be a subtransaction's ID under a
savepoint, which `pg_visible_in_snapshot` cannot judge, per the Postgres manual, "Transaction ID
and Snapshot Information Functions"). A reader holding an earlier snapshot tells the rows
written since by `NOT pg_visible_in_snapshot(changed, snapshot)` (`pipeline.aggregates.delta`)."""


class Xid8(UserDefinedType[int]):
    """Postgres `xid8`: a 64-bit transaction ID that never wraps around."""

    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        """The type's name in DDL."""
        return "xid8"


def _changed() -> Column[int]:
    """When the row was last written (`STAMP`); NULL for rows last written before migration
    0005 added the column, which every snapshot a reader may compare with sees."""
    return Column(STAMP_COLUMN, Xid8())


def _counters(*names: str) -> list[Column[int]]:
    return [Column(name, BigInteger, nullable=False, server_default="0") for name in names]


def _coach_key() -> Column[object]:
    return Column("coach_id", Uuid, primary_key=True)


def _client_key() -> Column[object]:
    return Column("client_id", Uuid, primary_key=True)


def _hour_key() -> Column[object]:
    return Column("hour", DateTime(timezone=True), primary_key=True)


client_counts = Table(
    "client_counts",
    metadata,
    _coach_key(),
    *_counters("total", "active", "paused", "archived"),
    _changed(),
)
session_counts = Table(
    "session_counts",
    metadata,
    _coach_key(),
    *_counters(
        "total",
        "scheduled",
        "completed",
        "cancelled",
        "no_show",
        "completed_minutes",
        "completed_revenue",
    ),
    _changed(),
)
session_client_counts = Table(
    "session_client_counts",
    metadata,
    _coach_key(),
    _client_key(),
    *_counters("completed"),
    Column("last_completed_at", DateTime(timezone=True)),
    _changed(),
)
client_schedules = Table(
    "client_schedules",
    metadata,
    _coach_key(),
    _client_key(),
    *_counters("scheduled"),
    Column("next_scheduled_at", DateTime(timezone=True)),
    Column("next_checked_at", DateTime(timezone=True)),
    _changed(),
)
completed_hours = Table(
    "completed_hours",
    metadata,
    _coach_key(),
    _hour_key(),
    *_counters("sessions", "revenue"),
    _changed(),
)
scheduled_hours = Table(
    "scheduled_hours",
    metadata,
    _coach_key(),
    _hour_key(),
    *_counters("sessions"),
    _changed(),
)
rating_counts = Table(
    "rating_counts",
    metadata,
    _coach_key(),
    *_counters("count", "total", *(f"stars_{stars}" for stars in range(1, 6))),
    _changed(),
)
rating_hours = Table(
    "rating_hours",
    metadata,
    _coach_key(),
    _hour_key(),
    *_counters("count", "total"),
    _changed(),
)
feedback_counts = Table("feedback_counts", metadata, _coach_key(), *_counters("count"), _changed())
goal_counts = Table(
    "goal_counts",
    metadata,
    _coach_key(),
    *_counters("total", "active", "completed", "abandoned", "active_progress"),
    _changed(),
)
goal_client_counts = Table(
    "goal_client_counts",
    metadata,
    _coach_key(),
    _client_key(),
    *_counters("active", "active_progress"),
    _changed(),
)


def _when(condition: str) -> str:
    return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


def _bucket(moment: str) -> str:
    return f"date_bin(interval '{BUCKET.total_seconds():.0f} seconds', {moment}, '{BUCKET_ORIGIN}')"


@dataclass(frozen=True)
class Latest:
    """A key's greatest (`max`) or least (`min`) `source_column` among the source rows matching
    the summary's `where` and `condition`: not a sum, so read again, by index, for the keys a
    statement touched. A `condition` that reads the clock (`now()`) needs `checked_at`, the
    column that records when the value was read; the reader trusts it only from then on."""

    column: str
    source_column: str
    function: Literal["max", "min"] = "max"
    condition: str = "true"
    """SQL over the source row's columns."""
    checked_at: str | None = None


@dataclass(frozen=True)
class Summary:
    """One summary table: the rows of `source` matching `where` summed by `keys`.

    `keys` and `values` map the summary's columns to SQL expressions over a source row's
    columns (unqualified); a value expression is what one row adds (an integer).
    """

    table: Table
    source: str
    keys: dict[str, str]
    values: dict[str, str]
    where: str = "true"
    latest: Latest | None = None

    @property
    def is_anchor(self) -> bool:
        return list(self.keys) == ["coach_id"]


_COACH = {"coach_id": "coach_id"}
_CLIENT = {"coach_id": "coach_id", "client_id": "client_id"}
_COMPLETED = "status = 'completed'"
_SCHEDULED = "status = 'scheduled'"
_ACTIVE_GOAL = "status = 'active'"

SUMMARIES: tuple[Summary, ...] = (
    Summary(
        client_counts,
        "users",
        _COACH,
        {"total": "1", **{s: _when(f"status = '{s}'") for s in ("active", "paused", "archived")}},
        "role = 'client'",
    ),
    Summary(
        session_counts,
        "sessions",
        _COACH,
        {
            "total": "1",
            **{
                s: _when(f"status = '{s}'")
                for s in ("scheduled", "completed", "cancelled", "no_show")
            },
            "completed_minutes": f"CASE WHEN {_COMPLETED} THEN duration_minutes ELSE 0 END",
            "completed_revenue": f"CASE WHEN {_COMPLETED} THEN coalesce(price_cents, 0) ELSE 0 END",
        },
    ),
    Summary(
        session_client_counts,
        "sessions",
        _CLIENT,
        {"completed": "1"},
        _COMPLETED,
        latest=Latest("last_completed_at", "scheduled_at"),
    ),
    Summary(
        client_schedules,
        "sessions",
        _CLIENT,
        {"scheduled": "1"},
        _SCHEDULED,
        latest=Latest(
            column="next_scheduled_at",
            source_column="scheduled_at",
            function="min",
            condition="scheduled_at > now()",
            checked_at="next_checked_at",
        ),
    ),
    Summary(
        completed_hours,
        "sessions",
        {**_COACH, "hour": _bucket("completed_at")},
        {"sessions": "1", "revenue": "coalesce(price_cents, 0)"},
        f"{_COMPLETED} AND completed_at IS NOT NULL",
    ),
    Summary(
        scheduled_hours,
        "sessions",
        {**_COACH, "hour": _bucket("scheduled_at")},
        {"sessions": "1"},
        _SCHEDULED,
    ),
    Summary(
        rating_counts,
        "session_ratings",
        _COACH,
        {
            "count": "1",
            "total": "rating",
            **{f"stars_{stars}": _when(f"rating = {stars}") for stars in range(1, 6)},
        },
    ),
    Summary(
        rating_hours,
        "session_ratings",
        {**_COACH, "hour": _bucket("created_at")},
        {"count": "1", "total": "rating"},
    ),
    Summary(feedback_counts, "session_feedback", _COACH, {"count": "1"}),
    Summary(
        goal_counts,
        "goals",
        _COACH,
        {
            "total": "1",
            **{s: _when(f"status = '{s}'") for s in ("active", "completed", "abandoned")},
            "active_progress": f"CASE WHEN {_ACTIVE_GOAL} THEN progress ELSE 0 END",
        },
    ),
    Summary(
        goal_client_counts,
        "goals",
        _CLIENT,
        {"active": "1", "active_progress": "progress"},
        _ACTIVE_GOAL,
    ),
)

SOURCES: tuple[str, ...] = tuple(dict.fromkeys(summary.source for summary in SUMMARIES))
"""The watched tables that have summaries (all five)."""

SOURCE_OF: dict[str, str] = {summary.table.name: summary.source for summary in SUMMARIES}
"""Summary table name → the watched table it sums (routing treats a read of one as the other)."""

CLOCKED: tuple[Summary, ...] = tuple(
    summary for summary in SUMMARIES if summary.latest and summary.latest.checked_at
)
"""The summaries whose latest value is relative to the clock (read again once it has passed)."""


def of_source(source: str) -> tuple[Summary, ...]:
    """The summaries of one watched table, its anchor first."""
    mine = [summary for summary in SUMMARIES if summary.source == source]
    return tuple(sorted(mine, key=lambda summary: not summary.is_anchor))


def anchor(source: str) -> Summary:
    return of_source(source)[0]


def _check_one_anchor_each() -> None:
    for source in SOURCES:
        anchors = [s for s in of_source(source) if s.is_anchor]
        if len(anchors) != 1:
            raise RuntimeError(f"{source} needs exactly one summary keyed by coach alone")


_check_one_anchor_each()
