-- Supabase Realtime keeps its own tables (tenants, extensions, its migrations) in schema
-- `_realtime`; DB_AFTER_CONNECT_QUERY in docker-compose.yml points its connections there.
-- The supabase/postgres image runs this once, as supabase_admin, when the data volume is new.
create schema if not exists _realtime;
alter schema _realtime owner to supabase_admin;
