"""The JSON shape of the figures, one for the API and the CLI's ``--json``: each row its
grouping keys, ``records``, ``quantity_kg``, ``quantity_l`` and ``quantity_units``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from vault.seizures.figures import BeforeAfter, SeizureStats, StatsRow

__all__ = ["before_after_json", "row_json", "stats_json"]


def row_json(row: StatsRow) -> dict[str, Any]:
    """One row flat: its keys, then its totals."""
    return {**row.keys, **asdict(row.totals)}


def stats_json(stats: SeizureStats) -> dict[str, Any]:
    """The grouping, the dates asked for and the rows."""
    return {
        "by": list(stats.by),
        "from": stats.date_from.isoformat() if stats.date_from else None,
        "to": stats.date_to.isoformat() if stats.date_to else None,
        "rows": [row_json(r) for r in stats.rows],
    }


def before_after_json(figure: BeforeAfter) -> dict[str, Any]:
    """A crossing point's windows, totals either side, and the change of each figure
    (absolute, and relative: null where the figure before was zero)."""
    change = {}
    for family in ("records", "quantity_kg", "quantity_l", "quantity_units"):
        absolute, relative = figure.change(family)
        change[family] = {"absolute": round(absolute, 6), "relative": relative}
    return {
        "crossing_point": figure.crossing_point,
        "country": figure.country,
        "name": figure.name,
        "blo_opened": figure.blo_opened.isoformat(),
        "window_days": figure.window_days,
        "before": asdict(figure.before),
        "after": asdict(figure.after),
        "change": change,
    }
