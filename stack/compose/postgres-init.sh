#!/bin/sh
# Runs once, as the image's superuser, when the postgres container's volume is new:
# the application role owns the relaybus database but is not a superuser.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE relaybus_app LOGIN NOSUPERUSER NOCREATEROLE PASSWORD '${APP_DB_PASSWORD}';
ALTER DATABASE relaybus OWNER TO relaybus_app;
ALTER SCHEMA public OWNER TO relaybus_app;
SQL
