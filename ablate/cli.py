"""The `ablate` command line. Bad input is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ablate import __version__
from ablate.study import Study, StudyError, load_study

app = typer.Typer(
    name="ablate",
    help="Architecture ablation studies of ResNet-family CNNs.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _load(path: Path) -> Study:
    try:
        return load_study(path)
    except StudyError as exc:
        raise fail(str(exc)) from None


def human(n: int) -> str:
    """0.27M, 40.6M, 1.82G: the papers' way of writing counts."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(n)


def variant_rows(study: Study) -> list[dict[str, object]]:
    from ablate.models import measure  # torch is imported only when needed

    rows = []
    for spec in study.variants:
        params, macs = measure(spec, study.info)
        rows.append({"name": spec.name, **spec.axes(), "params": params, "macs": macs})
    return rows


@app.command()
def variants(
    study: Annotated[Path, typer.Argument(help="Study file (TOML).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
) -> None:
    """List the variants a study file generates, with parameters and MACs."""
    s = _load(study)
    rows = variant_rows(s)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title=f"{s.name}: {len(rows)} variants on {s.dataset} ({s.info.channels}x{s.info.size}x{s.info.size})")
    for col in ("name", "connection", "activation", "block", "depth", "shortcut", "stem", "width", "blocks", "params", "MACs"):
        table.add_column(col, justify="right" if col in ("depth", "width", "params", "MACs") else "left")
    for r in rows:
        table.add_row(
            str(r["name"]), str(r["connection"]), str(r["activation"]), str(r["block"]), str(r["depth"]),
            r["shortcut"] or "-", str(r["stem"]), str(r["width"]), "-".join(map(str, r["blocks"])),
            human(r["params"]), human(r["macs"]),
        )
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # piped: do not squeeze the table into 80 columns
    out.print(table)


def version_callback(value: bool) -> None:
    if value:
        print(f"ablate {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Architecture ablation studies of ResNet-family CNNs."""


def main() -> None:
    app()
