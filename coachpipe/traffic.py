"""Realistic change traffic against the five tables, for `simulate`, the demo and the benchmarks.

Each change is one small transaction an application would make: a session booked, completed,
cancelled or moved to another coach, a rating or feedback left, a goal created or advanced, a
client signed up. Changes are paced open-loop at the requested rate.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from uuid import UUID, uuid4

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from config import Settings
from pipeline.db import libpq_dsn

COMMENTS = ("Clear next steps.", "Great energy today.", "We went deep on priorities.", "Useful!")
MAX_ATTEMPTS = 20
Item = TypeVar("Item")
KINDS = {  # kind → weight
    "book": 25,
    "complete": 20,
    "rate": 15,
    "feedback": 10,
    "cancel": 8,
    "goal_progress": 10,
    "new_goal": 5,
    "new_client": 3,
    "move_session": 2,
    "delete_cancelled": 2,
}


@dataclass(frozen=True)
class Change:
    kind: str
    table: str
    coaches: tuple[UUID, ...]
    commit_ms: float
    """Epoch ms by which the commit was visible: from a `ChangeWriter(server_clock=True)` on a
    server with `track_commit_timestamp` on, the database clock of a SELECT sent in the same
    message as the COMMIT (the server runs it as soon as the COMMIT is done); otherwise the
    wall clock right after the commit returned."""
    sent_ms: float
    """Epoch ms before which the commit was not visible: with the server's clock (above), the
    commit timestamp Postgres recorded (`pg_xact_commit_timestamp`); otherwise the wall clock right
    before the change's statement was sent. The commit became visible somewhere in [sent_ms,
    commit_ms]: with the server's clocks as wide as the COMMIT's work on the server, with the
    client's as wide as the statement plus any wait for the writer's thread to run again (hundreds
    of ms in a busy bench process)."""


class _Gone(Exception):
    """The remembered row is gone (another writer deleted it): the statement changed nothing."""


@dataclass
class _Book:
    clients: list[UUID] = field(default_factory=list)
    scheduled: list[UUID] = field(default_factory=list)
    unrated: list[tuple[UUID, UUID]] = field(default_factory=list)
    cancelled: list[UUID] = field(default_factory=list)
    goals: list[UUID] = field(default_factory=list)


class ChangeWriter:
    """Writes one realistic change per call on an autocommit connection (each change one
    transaction)."""

    def __init__(
        self,
        conn: psycopg.Connection[TupleRow],
        coaches: list[UUID],
        seed: int = 7,
        *,
        server_clock: bool = False,
    ) -> None:
        if not coaches:
            raise ValueError("no coaches to write changes for; run `coachpipe seed` first")
        self.conn = conn
        self.coaches = coaches
        self.rng = random.Random(seed)
        self.books: dict[UUID, _Book] = defaultdict(_Book)
        self.conflicts = 0
        setting = conn.execute("SHOW track_commit_timestamp").fetchone()
        self.commit_timestamps = server_clock and setting is not None and setting[0] == "on"
        """Whether `Change` brackets come from the server's clocks (see `Change.sent_ms`):
        asked for with `server_clock` (the bench), and possible with `track_commit_timestamp`
        on. It costs two more round trips a change (the transaction id; BEGIN), so the CLI and
        the demo keep one autocommit statement a change."""
        self.last_xid: str | None = None
        """The transaction id of the last change, when `commit_timestamps`."""
        self._load()

    def _load(self) -> None:
        ids = self.coaches
        for coach, client in self.conn.execute(
            "SELECT coach_id, id FROM users WHERE role = 'client' AND coach_id = ANY(%s)", (ids,)
        ):
            self.books[coach].clients.append(client)
        # Two branches, not one OR: under an OR the NOT EXISTS is a subplan that scans the
        # ratings once per completed session (no index on session_id), hours for a coach with
        # a million sessions; alone it is a hash anti-join.
        for coach, session, client, status in self.conn.execute(
            "SELECT s.coach_id, s.id, s.client_id, s.status FROM sessions s"
            " WHERE s.coach_id = ANY(%(ids)s) AND s.status IN ('scheduled', 'cancelled')"
            " UNION ALL SELECT s.coach_id, s.id, s.client_id, s.status FROM sessions s"
            " WHERE s.coach_id = ANY(%(ids)s) AND s.status = 'completed' AND NOT EXISTS"
            " (SELECT 1 FROM session_ratings r WHERE r.session_id = s.id)",
            {"ids": ids},
        ):
            book = self.books[coach]
            if status == "scheduled":
                book.scheduled.append(session)
            elif status == "cancelled":
                book.cancelled.append(session)
            else:
                book.unrated.append((session, client))
        for coach, goal in self.conn.execute(
            "SELECT coach_id, id FROM goals WHERE coach_id = ANY(%s) AND status = 'active'", (ids,)
        ):
            self.books[coach].goals.append(goal)

    def write(self, coach: UUID | None = None) -> Change:
        """One change. Another writer may have deleted or moved a row this one remembers: the
        statement then fails on a constraint or finds no row (no change: nothing committed,
        nothing for a listener to see), the row is forgotten and another change is made. A
        remembered row another writer moved to another coach is changed under that coach: the
        change names the coaches the statement really touched (its `RETURNING`), never the
        ones this writer remembered."""
        for _ in range(MAX_ATTEMPTS):
            chosen = coach or self.rng.choice(self.coaches)
            kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            sent_ms = time.time() * 1000
            try:
                if not self.commit_timestamps:
                    table, coaches = getattr(self, f"_{kind}")(chosen)
                    return Change(kind, table, coaches, time.time() * 1000, sent_ms)
                self.conn.execute("BEGIN")
                try:
                    table, coaches = getattr(self, f"_{kind}")(chosen)
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                return Change(kind, table, coaches, *self._commit())
            except (psycopg.errors.IntegrityError, _Gone):
                self.conflicts += 1
        raise RuntimeError(f"no change possible after {MAX_ATTEMPTS} attempts")

    def _commit(self) -> tuple[float, float]:
        """Commit the open transaction; return (visible by, not visible before) in epoch ms
        from the server's clocks: the clock of a SELECT sent in the same message as the COMMIT
        (simple query protocol: the server runs it as soon as the COMMIT is done, whatever the
        client's thread is doing), and the transaction's commit timestamp."""
        found = self.conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        assert found is not None
        self.last_xid = str(found[0])
        xid = sql.Literal(str(int(self.last_xid) % 2**32))
        cursor = self.conn.execute(
            sql.SQL(
                "COMMIT; SELECT extract(epoch FROM clock_timestamp()) * 1000,"
                " extract(epoch FROM pg_xact_commit_timestamp({}::text::xid)) * 1000"
            ).format(xid)
        )
        cursor.nextset()
        row = cursor.fetchone()
        assert row is not None and row[1] is not None, "track_commit_timestamp was turned off"
        return float(row[0]), float(row[1])

    def _touched(self, sql: str, params: tuple[object, ...]) -> tuple[UUID, ...]:
        """Run a statement on one remembered row; return the coach ids its `RETURNING` names
        (distinct, in order), or raise `_Gone` when another writer deleted the row."""
        row = self.conn.execute(sql, params).fetchone()
        if row is None:
            raise _Gone
        return tuple(dict.fromkeys(row))

    def _pop(self, items: list[Item]) -> Item:
        return items.pop(self.rng.randrange(len(items)))

    def _book(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        if not book.clients:
            return self._new_client(coach)
        session = uuid4()
        self.conn.execute(
            "INSERT INTO sessions (id, coach_id, client_id, status, scheduled_at, duration_minutes,"
            " price_cents) VALUES (%s, %s, %s, 'scheduled',"
            " now() + %s * interval '1 hour', 60, 9900)",
            (session, coach, self.rng.choice(book.clients), self.rng.randint(2, 24 * 21)),
        )
        book.scheduled.append(session)
        return "sessions", (coach,)

    def _complete(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        if not book.scheduled:
            return self._book(coach)
        session = self._pop(book.scheduled)
        row = self.conn.execute(
            "UPDATE sessions SET status = 'completed', completed_at = now() WHERE id = %s"
            " RETURNING client_id, coach_id",
            (session,),
        ).fetchone()
        if row is None:
            raise _Gone
        book.unrated.append((session, row[0]))
        return "sessions", (row[1],)

    def _cancel(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        if not book.scheduled:
            return self._book(coach)
        session = self._pop(book.scheduled)
        touched = self._touched(
            "UPDATE sessions SET status = 'cancelled' WHERE id = %s RETURNING coach_id", (session,)
        )
        book.cancelled.append(session)
        return "sessions", touched

    def _rate(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        if not book.unrated:
            return self._complete(coach)
        session, client = self._pop(book.unrated)
        self.conn.execute(
            "INSERT INTO session_ratings (session_id, coach_id, client_id, rating)"
            " VALUES (%s, %s, %s, %s)",
            (session, coach, client, self.rng.choices((1, 2, 3, 4, 5), (2, 3, 10, 35, 50))[0]),
        )
        return "session_ratings", (coach,)

    def _feedback(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        if not book.unrated:
            return self._complete(coach)
        session, client = self.rng.choice(book.unrated)
        self.conn.execute(
            "INSERT INTO session_feedback (session_id, coach_id, client_id, comment)"
            " VALUES (%s, %s, %s, %s)",
            (session, coach, client, self.rng.choice(COMMENTS)),
        )
        return "session_feedback", (coach,)

    def _goal_progress(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        if not book.goals:
            return self._new_goal(coach)
        touched = self._touched(
            "UPDATE goals SET progress = LEAST(100, progress + %s) WHERE id = %s"
            " RETURNING coach_id",
            (self.rng.randint(1, 15), self.rng.choice(book.goals)),
        )
        return "goals", touched

    def _new_goal(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        if not book.clients:
            return self._new_client(coach)
        goal = uuid4()
        self.conn.execute(
            "INSERT INTO goals (id, coach_id, client_id, title, progress)"
            " VALUES (%s, %s, %s, %s, 0)",
            (goal, coach, self.rng.choice(book.clients), "Build a weekly review habit"),
        )
        book.goals.append(goal)
        return "goals", (coach,)

    def _new_client(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        client = uuid4()
        self.conn.execute(
            "INSERT INTO users (id, role, coach_id, full_name, email)"
            " VALUES (%s, 'client', %s, %s, %s)",
            (client, coach, f"New Client {str(client)[:4]}", f"{client}@example.com"),
        )
        self.books[coach].clients.append(client)
        return "users", (coach,)

    def _move_session(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        other = self.rng.choice(self.coaches)
        if not book.scheduled or other == coach:
            return self._book(coach)
        session = self._pop(book.scheduled)
        # The old coach as the update found it (FOR UPDATE waits for, and rereads, a concurrent
        # move), not as this writer remembers it.
        touched = self._touched(
            "WITH old AS (SELECT id, coach_id FROM sessions WHERE id = %s FOR UPDATE)"
            " UPDATE sessions SET coach_id = %s FROM old WHERE sessions.id = old.id"
            " RETURNING old.coach_id, sessions.coach_id",
            (session, other),
        )
        self.books[other].scheduled.append(session)
        return "sessions", touched

    def _delete_cancelled(self, coach: UUID) -> tuple[str, tuple[UUID, ...]]:
        book = self.books[coach]
        if not book.cancelled:
            return self._cancel(coach)
        session = self._pop(book.cancelled)
        touched = self._touched("DELETE FROM sessions WHERE id = %s RETURNING coach_id", (session,))
        return "sessions", touched


def pick_coaches(conn: psycopg.Connection[TupleRow], count: int, seed: int) -> list[UUID]:
    """`count` active coaches, the same ones for the same seed."""
    rows = conn.execute(
        "SELECT id FROM users WHERE role = 'coach' AND status <> 'archived' ORDER BY id"
    ).fetchall()
    coaches = [row[0] for row in rows]
    random.Random(seed).shuffle(coaches)
    return sorted(coaches[:count])


@dataclass
class TrafficStats:
    changes: int = 0
    seconds: float = 0.0
    coaches: int = 0
    behind_s: float = 0.0
    """How far the writer fell behind the requested schedule at worst."""


def run_traffic(
    settings: Settings,
    *,
    rate: float,
    duration: float,
    coaches: int,
    seed: int = 7,
    on_change: Callable[[Change], None] | None = None,
    stop: threading.Event | None = None,
) -> TrafficStats:
    with psycopg.connect(libpq_dsn(settings.require_database_url()), autocommit=True) as conn:
        chosen = pick_coaches(conn, coaches, seed)
        writer = ChangeWriter(conn, chosen, seed)
        return pace(writer.write, rate=rate, duration=duration, on_change=on_change, stop=stop,
                    coaches=len(chosen))  # fmt: skip


def pace(
    write: Callable[[], Change],
    *,
    rate: float,
    duration: float,
    coaches: int = 0,
    on_change: Callable[[Change], None] | None = None,
    stop: threading.Event | None = None,
) -> TrafficStats:
    """Call `write` `rate` times a second for `duration` seconds, open loop."""
    stats = TrafficStats(coaches=coaches)
    start = time.monotonic()
    total = int(rate * duration)
    for index in range(total):
        if stop is not None and stop.is_set():
            break
        due = start + index / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            stats.behind_s = max(stats.behind_s, now - due)
        change = write()
        stats.changes += 1
        if on_change is not None:
            on_change(change)
    stats.seconds = time.monotonic() - start
    return stats
