"""The five watched tables, their indexes and their replica identity.

Every statement is idempotent (IF NOT EXISTS, OR REPLACE, idempotent ALTERs), so this revision
also applies cleanly to a Supabase database that already has some of these tables.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None

TABLES = """
CREATE TABLE IF NOT EXISTS public.users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    role text NOT NULL CONSTRAINT users_role_check CHECK (role IN ('coach', 'client', 'admin')),
    coach_id uuid REFERENCES public.users (id) ON DELETE SET NULL,
    full_name text NOT NULL,
    email text,
    status text NOT NULL DEFAULT 'active'
        CONSTRAINT users_status_check CHECK (status IN ('active', 'paused', 'archived')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.sessions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    coach_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    client_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'scheduled' CONSTRAINT sessions_status_check
        CHECK (status IN ('scheduled', 'completed', 'cancelled', 'no_show')),
    scheduled_at timestamptz NOT NULL,
    duration_minutes integer NOT NULL DEFAULT 60,
    price_cents integer,
    completed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.session_feedback (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id uuid NOT NULL REFERENCES public.sessions (id) ON DELETE CASCADE,
    coach_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    client_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    comment text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.session_ratings (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id uuid NOT NULL REFERENCES public.sessions (id) ON DELETE CASCADE,
    coach_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    client_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    rating smallint NOT NULL CONSTRAINT session_ratings_rating_check CHECK (rating BETWEEN 1 AND 5),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.goals (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    coach_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    client_id uuid NOT NULL REFERENCES public.users (id) ON DELETE CASCADE,
    title text NOT NULL,
    status text NOT NULL DEFAULT 'active'
        CONSTRAINT goals_status_check CHECK (status IN ('active', 'completed', 'abandoned')),
    progress smallint NOT NULL DEFAULT 0
        CONSTRAINT goals_progress_check CHECK (progress BETWEEN 0 AND 100),
    target_date date,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

# Each index serves a named reader: an aggregate's per-coach scan, the clock tick's time
# boundaries (pipeline.coaches.coaches_crossing) or the catch-up after a realtime outage
# (pipeline.coaches.coaches_changed_since).
INDEXES = """
CREATE INDEX IF NOT EXISTS users_coach_clients_idx
    ON public.users (coach_id, full_name COLLATE "C", id) WHERE role = 'client';
CREATE INDEX IF NOT EXISTS users_role_status_idx ON public.users (role, status);
CREATE INDEX IF NOT EXISTS users_updated_at_idx ON public.users (updated_at);

CREATE INDEX IF NOT EXISTS sessions_coach_updated_idx
    ON public.sessions (coach_id, updated_at DESC, id);
CREATE INDEX IF NOT EXISTS sessions_scheduled_at_idx
    ON public.sessions (scheduled_at) WHERE status = 'scheduled';
CREATE INDEX IF NOT EXISTS sessions_completed_at_idx
    ON public.sessions (completed_at) WHERE status = 'completed';
CREATE INDEX IF NOT EXISTS sessions_updated_at_idx ON public.sessions (updated_at);

CREATE INDEX IF NOT EXISTS session_feedback_coach_created_idx
    ON public.session_feedback (coach_id, created_at DESC, id);
CREATE INDEX IF NOT EXISTS session_feedback_created_at_idx
    ON public.session_feedback (created_at);

CREATE INDEX IF NOT EXISTS session_ratings_coach_created_idx
    ON public.session_ratings (coach_id, created_at DESC, id);
CREATE INDEX IF NOT EXISTS session_ratings_created_at_idx ON public.session_ratings (created_at);

CREATE INDEX IF NOT EXISTS goals_coach_updated_idx ON public.goals (coach_id, updated_at DESC, id);
CREATE INDEX IF NOT EXISTS goals_updated_at_idx ON public.goals (updated_at);
"""

# UPDATE and DELETE events must carry the old row (the old coach_id of a reassigned session),
# and the catch-up after an outage relies on updated_at moving on every update.
REPLICATION = """
ALTER TABLE public.users REPLICA IDENTITY FULL;
ALTER TABLE public.sessions REPLICA IDENTITY FULL;
ALTER TABLE public.session_feedback REPLICA IDENTITY FULL;
ALTER TABLE public.session_ratings REPLICA IDENTITY FULL;
ALTER TABLE public.goals REPLICA IDENTITY FULL;

CREATE OR REPLACE FUNCTION public.coachpipe_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER coachpipe_touch_updated_at BEFORE UPDATE ON public.users
    FOR EACH ROW EXECUTE FUNCTION public.coachpipe_touch_updated_at();
CREATE OR REPLACE TRIGGER coachpipe_touch_updated_at BEFORE UPDATE ON public.sessions
    FOR EACH ROW EXECUTE FUNCTION public.coachpipe_touch_updated_at();
CREATE OR REPLACE TRIGGER coachpipe_touch_updated_at BEFORE UPDATE ON public.goals
    FOR EACH ROW EXECUTE FUNCTION public.coachpipe_touch_updated_at();
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(INDEXES)
    op.execute(REPLICATION)


def downgrade() -> None:
    op.execute(
        "DROP TABLE IF EXISTS public.goals, public.session_ratings, public.session_feedback, "
        "public.sessions, public.users CASCADE; "
        "DROP FUNCTION IF EXISTS public.coachpipe_touch_updated_at()"
    )
