"""``dhtstore db copy`` on the command line: progress, report, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import anyio
from click.testing import CliRunner
from test_db_copy import fill

from dhtstore.cli import main
from dhtstore.data.engine import default_store_url


def test_the_cli_copies_shows_progress_and_refuses_a_full_target(sqlite_store_url: str, tmp_path: Path) -> None:
    anyio.run(fill, sqlite_store_url, 3)
    target = default_store_url(tmp_path / "target")
    runner = CliRunner()
    result = runner.invoke(main, ["db", "copy", "--from", sqlite_store_url, "--to", target, "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "counts and checksums match" in result.output
    assert "provider_records" in result.output and "copying" in result.stderr

    again = runner.invoke(main, ["db", "copy", "--from", sqlite_store_url, "--to", target])
    assert again.exit_code == 1
    assert "already holds data" in again.stderr and "Traceback" not in again.output + again.stderr
    merged = runner.invoke(main, ["db", "copy", "--from", sqlite_store_url, "--to", target, "--merge"])
    assert merged.exit_code == 0, merged.output
