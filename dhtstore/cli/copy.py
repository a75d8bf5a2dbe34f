"""``dhtstore db copy``: copy a whole store to another, e.g. SQLite to PostgreSQL."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ..data.copy import DEFAULT_BATCH_SIZE, CopyReport, copy_store
from ..data.engine import redact
from .common import run
from .db import db

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


class _ProgressBar:
    """click.progressbar fed by the copy: sized once the source's rows are counted."""

    def __init__(self) -> None:
        self._bar: ProgressBar[int] | None = None

    def start(self, total_rows: int) -> None:
        self._bar = click.progressbar(length=total_rows, label="copying", show_pos=True, file=sys.stderr)
        self._bar.__enter__()

    def advance(self, rows: int) -> None:
        assert self._bar is not None
        self._bar.update(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


@db.command("copy")
@click.option("--from", "source", required=True, metavar="URL", help="The store to copy (left unchanged).")
@click.option("--to", "target", required=True, metavar="URL", help="The store to fill; created and migrated if need be.")
@click.option("--merge", is_flag=True, help="Add to a target that already holds data; its own rows win on a key clash.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True, help="Rows per read and per write transaction.")
def copy_command(source: str, target: str, merge: bool, batch_size: int) -> None:
    """Copy every table of the store at --from into the store at --to, then compare them.

    Stop the node using either store first. An interrupted copy is resumed by running
    the same command again. Each table's row count and checksum are compared at the end.
    """
    bar = _ProgressBar()
    try:
        report = run(_copy, source, target, merge, batch_size, bar)
    finally:
        bar.close()
    _print_report(report, source, target)


async def _copy(source: str, target: str, merge: bool, batch_size: int, bar: _ProgressBar) -> CopyReport:
    return await copy_store(source, target, merge=merge, batch_size=batch_size, progress=bar)


def _print_report(report: CopyReport, source: str, target: str) -> None:
    how = "merged into" if report.merged else ("resumed and finished:" if report.resumed else "copied to")
    click.echo(f"{redact(source)} {how} {redact(target)}")
    width = max(len(t.table) for t in report.tables)
    for t in report.tables:
        verdict = "ok" if t.matches else ("merged" if report.merged else "DIFFERS")
        click.echo(f"  {t.table:<{width}}  {t.source_rows:>12,} → {t.target_rows:>12,}  sha256-sum {t.target_checksum[:16]}  {verdict}")
    click.echo(f"{report.rows:,} rows; " + ("counts and checksums match" if report.matches else "target holds other rows too (--merge)"))
