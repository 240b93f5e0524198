"""Listings on the command line: a table with a header row, tab-separated rows when piped, or JSON."""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import click

def _is_terminal() -> bool:
    return sys.stdout.isatty()


def _show_listing(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, as_json: bool,
                  lines: Sequence[str] | None = None, after: Sequence[str] | None = None) -> None:
    """Print a listing: ``--json`` an array of objects; on a terminal a table under a header row;
    piped, one tab-separated line per row on stdout (``lines`` when given: the historical format
    scripts read) with the header row on stderr. ``after``: text printed under each row."""
    if as_json:
        click.echo(json.dumps([dict(zip(columns, row)) for row in rows], default=str, indent=2))
        return
    cells = [[_cell(value) for value in row] for row in rows]
    if _is_terminal():
        widths = [max([len(column), *(len(row[i]) for row in cells)]) for i, column in enumerate(columns)]
        header, *shown = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [columns, *cells]]
        click.echo(header)
    else:
        click.echo("\t".join(columns), err=True)
        shown = list(lines) if lines is not None else ["\t".join(row) for row in cells]
    for i, line in enumerate(shown):
        click.echo(line)
        if after is not None:
            click.echo(after[i])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _unknown(option: str, value: str, known: Sequence[str], where: str) -> click.BadParameter:
    """An option naming something unknown: the close matches first, then every known one."""
    close = difflib.get_close_matches(value, known, n=3, cutoff=0.5)
    rest = [name for name in sorted(known) if name not in close]
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    listed = ", ".join([*close, *rest]) or "none"
    return click.BadParameter(f"{value!r} is not {where}.{hint} Known: {listed}.", param_hint=option)
