"""Realistic, deterministic demo and benchmark data, loaded with COPY.

The same `SeedPlan` (sizes, random seed, anchor day) always yields the same rows, ids included.
Rows are produced table by table as COPY text and streamed in large chunks; foreign keys are
checked by Postgres as usual, so the data is exactly what an application could have written.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

FIRST_NAMES = (
    "Ada", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi",
    "Liam", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera",
    "Wen", "Ximena", "Yusuf", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Okafor", "Schmidt", "Nakamura", "Silva", "Kowalski", "Haddad", "Larsen", "Moreau", "Patel",
    "Rossi", "Novak", "Kim", "Garcia", "Ivanova", "Mensah", "Brown", "Dubois", "Yilmaz",
)  # fmt: skip
GOAL_TITLES = (
    "Run a half marathon", "Sleep 7 hours a night", "Lead the team offsite",
    "Ship the side project", "Read 12 books", "Speak up in meetings", "Lose 5 kg",
    "Negotiate a raise", "Meditate daily", "Learn conversational Spanish",
)  # fmt: skip
COMMENTS = (
    "Great session, clear next steps.", "Felt rushed at the end.", "Really helpful framing.",
    "We should revisit the plan next time.", "Loved the exercises.", "Hard but worth it.",
    "Good accountability check-in.", "Would like more concrete homework.",
)  # fmt: skip
DURATIONS = (30, 45, 60, 60, 60, 90)


@dataclass(frozen=True)
class SeedPlan:
    coaches: int = 100
    clients_per_coach: int = 20
    sessions_per_client: int = 5
    goals_per_client: float = 1.5
    feedback_ratio: float = 0.35
    rating_ratio: float = 0.6
    seed: int = 42
    anchor: datetime = field(
        default_factory=lambda: datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    )
    history_days: int = 180
    future_days: int = 30

    @property
    def clients(self) -> int:
        return self.coaches * self.clients_per_coach

    @property
    def sessions(self) -> int:
        return self.clients * self.sessions_per_client


@dataclass
class SeedCounts:
    users: int = 0
    sessions: int = 0
    session_feedback: int = 0
    session_ratings: int = 0
    goals: int = 0

    def total(self) -> int:
        return (
            self.users + self.sessions + self.session_feedback + self.session_ratings + self.goals
        )


def _ts(moment: datetime) -> str:
    return moment.isoformat()


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


class _Generator:
    """Produces COPY text lines table by table, sharing one deterministic random stream."""

    def __init__(self, plan: SeedPlan) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.coach_ids = [_uuid(self.rng) for _ in range(plan.coaches)]
        self.counts = SeedCounts()

    def _name(self) -> str:
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"

    def users(self) -> Iterator[str]:
        rng, anchor = self.rng, self.plan.anchor
        for index, coach_id in enumerate(self.coach_ids):
            created = _ts(anchor - timedelta(days=rng.randint(200, 900)))
            status = "active" if rng.random() < 0.95 else "paused"
            yield (
                f"{coach_id}\tcoach\t\\N\t{self._name()}\tcoach{index}@example.com\t{status}"
                f"\t{created}\t{created}\n"
            )
        self.clients: list[tuple[uuid.UUID, uuid.UUID]] = []
        for index in range(self.plan.clients):
            coach_id = self.coach_ids[index // self.plan.clients_per_coach]
            client_id = _uuid(rng)
            self.clients.append((coach_id, client_id))
            roll = rng.random()
            status = "active" if roll < 0.8 else ("paused" if roll < 0.93 else "archived")
            created = _ts(
                anchor - timedelta(days=rng.randint(1, 400), minutes=rng.randint(0, 1439))
            )
            yield (
                f"{client_id}\tclient\t{coach_id}\t{self._name()}\tclient{index}@example.com"
                f"\t{status}\t{created}\t{created}\n"
            )

    def sessions(self) -> Iterator[str]:
        rng, plan = self.rng, self.plan
        span = plan.history_days + plan.future_days
        self.completed: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID, datetime]] = []
        for coach_id, client_id in self.clients:
            for _ in range(plan.sessions_per_client):
                session_id = _uuid(rng)
                offset = rng.random() * span - plan.history_days
                scheduled = plan.anchor + timedelta(days=offset)
                scheduled = scheduled.replace(minute=(scheduled.minute // 15) * 15, second=0,
                                              microsecond=0)  # fmt: skip
                duration = rng.choice(DURATIONS)
                price = rng.choice((5000, 7500, 9900, 12000, 15000, 20000))
                completed_at = "\\N"
                if offset >= 0:
                    status = "scheduled" if rng.random() < 0.92 else "cancelled"
                else:
                    roll = rng.random()
                    status = (
                        "completed" if roll < 0.8 else ("cancelled" if roll < 0.9 else "no_show")
                    )
                if status == "completed":
                    finished = scheduled + timedelta(minutes=duration)
                    completed_at = _ts(finished)
                    self.completed.append((session_id, coach_id, client_id, finished))
                created = scheduled - timedelta(days=rng.randint(1, 21))
                updated = finished if status == "completed" else created
                yield (
                    f"{session_id}\t{coach_id}\t{client_id}\t{status}\t{_ts(scheduled)}\t{duration}"
                    f"\t{price}\t{completed_at}\t{_ts(created)}\t{_ts(updated)}\n"
                )

    def session_feedback(self) -> Iterator[str]:
        rng = self.rng
        for session_id, coach_id, client_id, finished in self.completed:
            if rng.random() < self.plan.feedback_ratio:
                at = _ts(finished + timedelta(minutes=rng.randint(5, 2880)))
                comment = rng.choice(COMMENTS)
                yield f"{_uuid(rng)}\t{session_id}\t{coach_id}\t{client_id}\t{comment}\t{at}\n"

    def session_ratings(self) -> Iterator[str]:
        rng = self.rng
        for session_id, coach_id, client_id, finished in self.completed:
            if rng.random() < self.plan.rating_ratio:
                stars = rng.choices((1, 2, 3, 4, 5), weights=(2, 3, 10, 35, 50))[0]
                at = _ts(finished + timedelta(minutes=rng.randint(5, 1440)))
                yield f"{_uuid(rng)}\t{session_id}\t{coach_id}\t{client_id}\t{stars}\t{at}\n"

    def goals(self) -> Iterator[str]:
        rng, anchor = self.rng, self.plan.anchor
        for coach_id, client_id in self.clients:
            count = int(self.plan.goals_per_client) + (
                rng.random() < self.plan.goals_per_client % 1
            )
            for _ in range(count):
                roll = rng.random()
                status = "active" if roll < 0.6 else ("completed" if roll < 0.85 else "abandoned")
                progress = 100 if status == "completed" else rng.randint(0, 95)
                created = anchor - timedelta(days=rng.randint(10, 300))
                updated = created + timedelta(days=rng.randint(0, 9))
                target = (anchor + timedelta(days=rng.randint(-30, 180))).date().isoformat()
                yield (
                    f"{_uuid(rng)}\t{coach_id}\t{client_id}\t{rng.choice(GOAL_TITLES)}\t{status}"
                    f"\t{progress}\t{target}\t{_ts(created)}\t{_ts(updated)}\n"
                )


COLUMNS = {
    "users": "id, role, coach_id, full_name, email, status, created_at, updated_at",
    "sessions": "id, coach_id, client_id, status, scheduled_at, duration_minutes, price_cents, "
    "completed_at, created_at, updated_at",
    "session_feedback": "id, session_id, coach_id, client_id, comment, created_at",
    "session_ratings": "id, session_id, coach_id, client_id, rating, created_at",
    "goals": "id, coach_id, client_id, title, status, progress, target_date, "
    "created_at, updated_at",
}
CHUNK_LINES = 5000


def expected_rows(plan: SeedPlan) -> int:
    """A close estimate of the rows `load` writes, for progress bars."""
    completed = plan.sessions * 0.8 * plan.history_days / (plan.history_days + plan.future_days)
    return int(
        plan.coaches
        + plan.clients
        + plan.sessions
        + completed * (plan.feedback_ratio + plan.rating_ratio)
        + plan.clients * plan.goals_per_client
    )


def load(dsn: str, plan: SeedPlan, progress: Callable[[int], None] | None = None) -> SeedCounts:
    """Generate every table of `plan` and COPY it in, in one transaction."""
    generator = _Generator(plan)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")
        for table, columns in COLUMNS.items():
            rows = getattr(generator, table)()
            written = 0
            with cur.copy(f"COPY public.{table} ({columns}) FROM STDIN") as copy:
                chunk: list[str] = []
                for line in rows:
                    chunk.append(line)
                    if len(chunk) == CHUNK_LINES:
                        copy.write("".join(chunk))
                        written += len(chunk)
                        if progress:
                            progress(len(chunk))
                        chunk.clear()
                if chunk:
                    copy.write("".join(chunk))
                    written += len(chunk)
                    if progress:
                        progress(len(chunk))
            setattr(generator.counts, table, written)
        conn.commit()
        conn.autocommit = True
        for table in COLUMNS:
            conn.execute(f"ANALYZE public.{table}")
    return generator.counts


def is_empty(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT NOT EXISTS (SELECT 1 FROM public.users)").fetchone() == (True,)


def truncate(dsn: str) -> None:
    tables = ", ".join(f"public.{table}" for table in COLUMNS)
    with psycopg.connect(dsn) as conn:
        conn.execute(f"TRUNCATE {tables}")
