#!/bin/sh
# Runs once, as the image's superuser, when the postgres container's volume is new:
# the application role owns the relaybus database but is not a superuser.
# The password goes from the environment into a psql variable (\getenv: not on any
# command line) and reaches SQL as :'app_password', quoted as a literal by psql:
# never spliced into the statement, so a quote in it cannot end the string.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv app_password APP_DB_PASSWORD
CREATE ROLE relaybus_app LOGIN NOSUPERUSER NOCREATEROLE PASSWORD :'app_password';
ALTER DATABASE :"DBNAME" OWNER TO relaybus_app;
ALTER SCHEMA public OWNER TO relaybus_app;
SQL
