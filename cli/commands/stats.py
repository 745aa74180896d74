"""``blovault stats``: seizure statistics over exactly the records released to you."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Column, Table

from blo_vault.cli import render
from blo_vault.cli.commands._common import JsonOpt, api_client, parse_day
from blo_vault.cli.errors import BadServerReply, field, objects
from blo_vault.cli.render import out, print_json
from vault.seizures.figures import GROUP_KEYS

app = typer.Typer(
    help="Seizure statistics: only records released to you count, in every figure.",
    no_args_is_help=True,
)

_TOTALS = ("records", "quantity_kg", "quantity_l", "quantity_units")


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@app.command("seizures")
def stats_seizures(
    by: Annotated[
        str, typer.Option(help=f"Comma-separated grouping keys: {','.join(GROUP_KEYS)}.")
    ] = "month,commodity",
    date_from: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD).")] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Totals of the seizure records you may read, grouped; quantities per unit family
    (kg for g and kg, l, units for tablets and units)."""
    first, last = parse_day(date_from, "--from"), parse_day(date_to, "--to")
    with api_client() as client:
        result = client.seizure_stats(
            by=by,
            date_from=first.isoformat() if first else None,
            date_to=last.isoformat() if last else None,
        )
    keys = _grouping(by, result)
    rows = objects(result, "rows", "statistics")
    if as_json:
        print_json(rows)
        return
    # Headers as Text, like every cell: a header string would be read as rich markup.
    table = Table(*(Column(header=h) for h in render.cells(*keys, *_TOTALS)))
    for row in rows:
        values = [field(row, k, object, "statistics row") for k in (*keys, *_TOTALS)]
        table.add_row(*render.cells(*values[: len(keys)], *map(_number, values[len(keys) :])))
    out.print(table)
    out.print(render.line(f"ledger #{result.get('receipt')}"))


def _grouping(asked: str, result: dict[str, Any]) -> list[str]:
    """The grouping keys of the reply, which must be those asked for, in GROUP_KEYS order, as
    the server orders them; BadServerReply otherwise (they become the table's headers)."""
    wanted = {key.strip() for key in asked.split(",") if key.strip()}
    expected = [key for key in GROUP_KEYS if key in wanted]
    if field(result, "by", list, "statistics") != expected:
        raise BadServerReply(
            f"the server's statistics are not grouped by {','.join(expected) or 'nothing'}, "
            "as asked"
        )
    return expected


@app.command("before-after")
def stats_before_after(
    crossing_point: Annotated[
        str | None, typer.Option(help="One crossing point (default: all).")
    ] = None,
    window_days: Annotated[
        int | None,
        typer.Option(min=1, max=730, help="Days each side (default: since opening, <= 730)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Seizures you may read in equal windows before and after each BLO opened."""
    with api_client() as client:
        result = client.seizure_before_after(crossing_point=crossing_point, window_days=window_days)
    if as_json:
        print_json(result["figures"])
        return
    table = Table("crossing point", "opened", "days", "figure", "before", "after", "change")
    for f in objects(result, "figures", "before-and-after reply"):
        for total in _TOTALS:
            change = field(field(f, "change", dict, "figure"), total, dict, "figure's change")
            relative = change["relative"]
            if relative is not None and (
                not isinstance(relative, int | float) or isinstance(relative, bool)
            ):
                raise BadServerReply("the server's figure: a relative change is not a number")
            table.add_row(
                *render.cells(
                    f"{f['crossing_point']} ({f['country']})",
                    f["blo_opened"],
                    f["window_days"],
                    total,
                    _number(f["before"][total]),
                    _number(f["after"][total]),
                    _number(change["absolute"])
                    + ("" if relative is None else f" ({relative:+.0%})"),
                )
            )
    out.print(table)
    out.print(render.line(f"ledger #{result['receipt']}"))
