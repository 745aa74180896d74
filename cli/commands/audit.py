"""The auditor's views: ``blovault package audit`` and ``blovault authz explain``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from blo_vault.cli import render
from blo_vault.cli.commands._common import JsonOpt, api_client
from blo_vault.cli.errors import field
from blo_vault.cli.render import out, print_json

# Unnamed: ``blo_vault.cli.commands.package`` merges its command into the package group.
package_app = typer.Typer()
authz_app = typer.Typer(
    help="Ask why an access is allowed or denied (auditors, admins).", no_args_is_help=True
)


@package_app.command("audit")
def package_audit(package_id: str, as_json: JsonOpt = False) -> None:
    """Auditor's view of a package: who, when, how sensitive, released to whom; no content."""
    with api_client() as client:
        view = client.audit(package_id)
    if as_json:
        print_json(view)
        return
    out.print(
        render.line(
            f"{view['id']}: from {view['agency']} ({view['country']}), {view['classification']}, "
            f"{view['handling']}, {view['file_count']} files, {view['size']} bytes"
        )
    )
    table = Table("release id", "to", "status", "kind", "in force", "requested by", "decided by")
    for r in view["releases"]:
        table.add_row(
            *render.cells(
                r["id"],
                f"{r['country']} {r['agency'] or ''}".strip(),
                r["status"],
                r["kind"],
                "yes" if r["in_force"] else "no",
                r["requested_by"],
                r["decided_by"] or "",
            )
        )
    out.print(table)


@authz_app.command("explain")
def authz_explain(
    user: Annotated[str, typer.Option(help="Username asked about.")],
    package: Annotated[str, typer.Option(help="Package id.")],
    action: Annotated[str, typer.Option(help="Action, e.g. download, release, approve.")],
    as_json: JsonOpt = False,
) -> None:
    """Say whether USER may do ACTION to PACKAGE, and which rules, facts and policy decided."""
    with api_client() as client:
        result = client.explain(user=user, package=package, action=action)
    if as_json:
        print_json(result)
        return
    verdict = render.text("ALLOW", style="green") if result["allowed"] is True else None
    out.print(
        render.line(
            verdict or render.text("DENY", style="red"),
            f" {result['user']} {result['action']} {result['package']}",
        )
    )
    out.print(render.line(f"policy version {result['policy_hash']}"))
    if result.get("facts") is not None:
        for key, value in field(result, "facts", dict, "explanation").items():
            out.print(render.line(f"  {key}: {value}"))
        out.print(render.line(f"  deciding relation: {result['relation'] or '(none)'}"))
        for rule in _listed(result, "rules"):
            rule = rule if isinstance(rule, list) else [rule]
            out.print(render.line(f"  rule: p, {', '.join(str(r) for r in rule)}"))
        for grant in _listed(result, "grants"):
            out.print(render.line(f"  release in force: {grant}"))
        for n in _listed(result, "notes"):
            out.print(render.line(f"  note: {n}"))


def _listed(result: dict[str, Any], name: str) -> list[Any]:
    """``result[name]`` as a list (null as none); BadServerReply for anything else."""
    value = result.get(name)
    return [] if value is None else field(result, name, list, "explanation")
