-- The environment's login role, run by modules/database_role's Job as the server's admin
-- (psql variables: role, db, conn_limit; the password from the environment). Idempotent:
-- every apply that changes anything here runs it again.
\set ON_ERROR_STOP on
\getenv app_password ROLE_PASSWORD
-- Logs in; cannot create roles or databases (CREATE ROLE's defaults: not a superuser, no
-- replication; only a superuser could grant those, and Azure's admin is none).
SELECT format('CREATE ROLE %I LOGIN NOCREATEROLE NOCREATEDB', :'role')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOCREATEROLE NOCREATEDB CONNECTION LIMIT %s PASSWORD %L', :'role', :'conn_limit', :'app_password') \gexec
-- Its own database only: nobody else's role (other environments share the server) connects.
SELECT format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', :'db') \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', :'db', :'role') \gexec
-- The migrations (teachin migrate, and each role at start) create and own the tables.
\connect :db
SELECT format('GRANT CREATE, USAGE ON SCHEMA public TO %I', :'role') \gexec
