"""ANALYZE a load run's tables as autovacuum would, on a PostgreSQL server that has it off.

The CI machine's PostgreSQL runs with ``autovacuum = off`` (its conf.d); every other server,
docker-compose's included, has it on, as PostgreSQL's documentation insists. Without it a
schema that grows from a few rows to thousands in a run is planned for ever as the few rows it
had: the listing's cached generic plan sorted every package on each call, 20–48 ms where the
same call takes 0.3 ms on a server that analyses (BENCHMARKS.md, issue 14, 2026-12-07 11:30).
The load benchmark measures the vault, not that setting: so, when the server's autovacuum is
off, this does the part of its work that the planner sees -- with the server's own naptime,
threshold and scale factor -- and the summary says so. When autovacuum is on it does nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.harness import plain_pg_url

# Autovacuum's rule for ANALYZE (its naptime, base threshold and scale factor from the server),
# for the tables of the run's schema (search_path), and how the server is set.
_SETTINGS = (
    "SELECT current_setting('autovacuum'),"
    " (SELECT setting::int FROM pg_settings WHERE name = 'autovacuum_naptime'),"  # seconds
    " current_setting('autovacuum_analyze_threshold')::int,"
    " current_setting('autovacuum_analyze_scale_factor')::float8"
)
_DUE = (
    "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
    " WHERE s.schemaname = current_schema()"
    " AND s.n_mod_since_analyze > %s + %s * greatest(c.reltuples, 0)"
)


class AnalyzeAsAutovacuum:
    """The run's ANALYZEs that the server's autovacuum would have made (none when it is on)."""

    def __init__(self, database_url: str | None, *, stand_in: bool = True) -> None:
        self._url = plain_pg_url(database_url) if database_url else None
        self._stand_in = stand_in
        self.autovacuum: str | None = None
        self.analyses = 0
        self._rule: tuple[int, int, float] = (60, 50, 0.1)
        if self._url is not None:
            import psycopg

            with psycopg.connect(self._url, autocommit=True) as conn:
                row = conn.execute(_SETTINGS).fetchone()
            assert row is not None
            self.autovacuum, naptime, threshold, scale = row
            self._rule = (naptime, threshold, scale)

    @property
    def standing_in(self) -> bool:
        """Whether this does autovacuum's ANALYZEs (a PostgreSQL server with it off)."""
        return self._stand_in and self._url is not None and self.autovacuum == "off"

    async def run(self, deadline: float) -> None:
        """Now, then every naptime until ``deadline`` (``time.monotonic()``), ANALYZE what is
        due. (Autovacuum's first visit falls anywhere in its first naptime.)"""
        if not self.standing_in:
            return
        naptime = self._rule[0]
        while True:
            await asyncio.to_thread(self._round)
            wait = min(naptime, deadline - time.monotonic())
            if wait <= 0:
                return
            await asyncio.sleep(wait)
            if time.monotonic() >= deadline:
                return

    def _round(self) -> None:
        import psycopg
        from psycopg import sql

        assert self._url is not None
        _, threshold, scale = self._rule
        with psycopg.connect(self._url, autocommit=True) as conn:
            due = [name for (name,) in conn.execute(_DUE, (threshold, scale)).fetchall()]
            for name in due:
                conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(name)))
        self.analyses += len(due)

    def figures(self) -> dict[str, Any]:
        """For the summary: the server's autovacuum, and what was done in its stead."""
        if self._url is None:
            return {}
        out: dict[str, Any] = {"postgresql_autovacuum": self.autovacuum}
        if self.autovacuum == "off":
            out["analyses_in_autovacuums_stead"] = self.analyses if self._stand_in else None
        return out


__all__ = ["AnalyzeAsAutovacuum"]
