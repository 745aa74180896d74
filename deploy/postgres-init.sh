#!/bin/sh
# Runs once, when the PostgreSQL volume is created: the service's own role, which
# `blovault admin migrate --grant-app-role vault_app` then limits to SELECT and INSERT on the
# ledger tables. The schema owner is POSTGRES_USER.
#
# The password and the database name go in as psql variables, quoted by psql (:'pw', :"db"):
# pasted into the SQL, a password holding a quote broke the statement, and psql printed it.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v pw="$VAULT_APP_DB_PASSWORD" -v db="$POSTGRES_DB" <<'SQL'
CREATE ROLE vault_app LOGIN PASSWORD :'pw';
GRANT CONNECT ON DATABASE :"db" TO vault_app;
SQL
