#!/bin/sh
# Runs once, when the PostgreSQL volume is created: the service's own role, which
# `blovault admin migrate --grant-app-role vault_app` then limits to SELECT and INSERT on the
# ledger tables. The schema owner is POSTGRES_USER.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE vault_app LOGIN PASSWORD '${VAULT_APP_DB_PASSWORD}';
GRANT CONNECT ON DATABASE "$POSTGRES_DB" TO vault_app;
SQL
