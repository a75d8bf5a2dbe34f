"""``dhtstore provide``: add (arguments or a file, bad lines reported), rm, ls, status."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import anyio
import pytest
from cid import make_cid  # type: ignore[import-untyped]  # py-cid ships no type information
from click.testing import CliRunner
from sqlalchemy import select

from dhtstore.cli import main
from dhtstore.data.models import ProvidedKeyRow
from dhtstore.data.schema import open_store
from dhtstore.multihash import cid_string


def mh(i: int) -> bytes:
    return b"\x12\x20" + hashlib.sha256(b"cli%d" % i).digest()


def cli(store: str, *args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["provide", *args, "--store", store], input=input, catch_exceptions=False)


def ls_all(store: str) -> list[dict[str, object]]:
    result = cli(store, "ls", "--all", "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()][:-1]


def test_add_from_file_reports_bad_lines_and_imports_the_rest(sqlite_store_url: str, tmp_path: Path) -> None:
    lines = [cid_string(mh(i)) for i in range(50)]
    lines[10] = "not-a-cid"
    lines[20] = ""
    lines[30] = make_cid(0, "dag-pb", mh(5)).encode().decode()  # the same multihash as line 6
    lines[40] = cid_string(b"\x00\x51" + b"x" * 81)  # an 83-byte multihash
    f = tmp_path / "cids.txt"
    f.write_text("\n".join(lines) + "\n")
    result = cli(sqlite_store_url, "add", "--from-file", str(f))
    assert result.exit_code == 0, result.output
    assert "line 11:" in result.stderr and "not-a-cid" in result.stderr
    assert "line 41:" in result.stderr and "80" in result.stderr
    assert "line 21" not in result.stderr  # blank lines are skipped, not errors
    assert "added 46, already listed 1, refused 2" in result.stdout
    entries = ls_all(sqlite_store_url)
    assert len(entries) == 46
    assert all(e["state"] == "pending" for e in entries)


def test_add_arguments_rm_ls_status(sqlite_store_url: str) -> None:
    cids = [cid_string(mh(i)) for i in range(5)]
    assert "added 5" in cli(sqlite_store_url, "add", *cids).stdout
    result = cli(sqlite_store_url, "rm", cids[0], make_cid(0, "dag-pb", mh(1)).encode().decode(), "junk")
    assert result.exit_code == 1
    assert "removed 2, not listed 0, refused 1" in result.stdout and "argument 3" in result.stderr
    assert {e["cid"] for e in ls_all(sqlite_store_url)} == set(cids[2:])

    page = cli(sqlite_store_url, "ls", "--limit", "2", "--json").stdout.splitlines()
    assert len(page) == 3
    cursor = json.loads(page[-1])["next"]
    rest = cli(sqlite_store_url, "ls", "--after", cursor, "--json").stdout.splitlines()
    assert [json.loads(x)["cid"] for x in page[:2] + rest[:-1]] == [e["cid"] for e in ls_all(sqlite_store_url)]
    assert json.loads(rest[-1])["next"] is None

    text = cli(sqlite_store_url, "ls").stdout
    assert "pending" in text and cids[3] in text

    status = json.loads(cli(sqlite_store_url, "status", "--json").stdout)
    assert status["keys"] == 3 and status["pending"] == 3 and status["failing"] == 0
    human = cli(sqlite_store_url, "status")
    assert human.exit_code == 0 and "overdue" in human.stdout and "current region" in human.stdout


def test_add_without_input_is_a_usage_error(sqlite_store_url: str) -> None:
    result = CliRunner().invoke(main, ["provide", "add", "--store", sqlite_store_url])
    assert result.exit_code == 2


def test_missing_store_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["provide", "status", "--store", f"sqlite+aiosqlite:///{tmp_path}/none.db"])
    assert result.exit_code == 1
    assert "dhtstore init" in result.output and "Traceback" not in result.output


def _peak_import_memory(store: str, path: Path, lines: int, offset: int) -> tuple[int, str, str]:
    with path.open("w") as out:
        for i in range(offset, offset + lines):
            out.write(("garbage\n" if i % 1000 == 7 else cid_string(mh(i))) + "\n\n")
    tracemalloc.start()
    try:
        result = cli(store, "add", "--from-file", str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result.stdout, result.stderr


@pytest.mark.slow
def test_large_file_keeps_memory_flat(sqlite_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_BATCH", 1_000)  # the same pipeline, in smaller steps
    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_WINDOW", 2_000)
    small, out, _ = _peak_import_memory(sqlite_store_url, tmp_path / "small.txt", 5_000, 0)
    assert "added 4995, already listed 0, refused 5" in out
    large, out, err = _peak_import_memory(sqlite_store_url, tmp_path / "large.txt", 25_000, 5_000)
    assert "added 24975, already listed 0, refused 25" in out
    assert "line 15: not a CID" in err and "more bad lines" in err
    assert large < 1.3 * small  # five times the lines, not five times the memory


def test_import_in_windows_counts_across_batches_and_duplicates(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows of 7 CIDs sorted by Kademlia key, written 3 to a transaction: duplicates
    # fall in one window, across windows, and on a batch's edge once sorted.
    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_WINDOW", 7)
    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_BATCH", 3)
    assert "added 2" in cli(store_url, "add", cid_string(mh(0)), cid_string(mh(1))).stdout
    lines = [cid_string(mh(i)) for i in range(40)]  # 0 and 1 listed already
    lines += [cid_string(mh(i)) for i in (3, 3, 9, 25, 39)]  # repeated: in their window and in later ones
    lines += [make_cid(0, "dag-pb", mh(17)).encode().decode(), "junk"]  # CIDv0 of a listed multihash; a bad line
    f = tmp_path / "cids.txt"
    f.write_text("\n".join(lines) + "\n")
    result = cli(store_url, "add", "--from-file", str(f))
    assert result.exit_code == 0, result.output
    assert "added 38, already listed 8, refused 1" in result.stdout
    assert "line 47:" in result.stderr
    assert sorted(e["cid"] for e in ls_all(store_url)) == sorted(cid_string(mh(i)) for i in range(40))


def test_import_lays_each_window_out_in_kademlia_key_order(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sweep marks a region's keys provided together: in Kademlia-key order a
    # window's keys of one region are neighbouring rows, so that writes few pages.
    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_WINDOW", 50)
    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_BATCH", 10)
    f = tmp_path / "cids.txt"
    f.write_text("".join(cid_string(mh(i)) + "\n" for i in range(200)))
    assert cli(store_url, "add", "--from-file", str(f)).exit_code == 0

    async def by_insertion() -> list[bytes]:
        engine = await open_store(store_url)
        try:
            async with engine.connect() as conn:
                stmt = select(ProvidedKeyRow.kad_key).order_by(ProvidedKeyRow.id)
                return [bytes(k) for k in (await conn.execute(stmt)).scalars()]
        finally:
            await engine.dispose()

    kads = anyio.run(by_insertion)
    windows = [kads[i : i + 50] for i in range(0, 200, 50)]
    assert [w == sorted(w) for w in windows] == [True] * 4
    assert kads != sorted(kads)  # each window on its own, as the file's order gives them


def test_import_progress_reaches_the_file_size_window_by_window(
    sqlite_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import click

    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_WINDOW", 100)
    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_BATCH", 30)
    f = tmp_path / "cids.txt"
    f.write_text("# a comment\n" + "".join(cid_string(mh(i)) + "\n" for i in range(450)) + "junk\n\n")
    bars: list[object] = []
    progressbar = click.progressbar

    def recording(**kwargs: object):  # type: ignore[no-untyped-def]
        bar = progressbar(**kwargs)  # type: ignore[call-overload]
        bars.append(bar)
        positions: list[int] = []
        update = bar.update
        bar.update = lambda n, current_item=None: (update(n), positions.append(bar.pos))  # type: ignore[method-assign]
        bar.positions = positions
        return bar

    monkeypatch.setattr(click, "progressbar", recording)
    assert "added 450, already listed 0, refused 1" in cli(sqlite_store_url, "add", "--from-file", str(f)).stdout
    (bar,) = bars
    positions = bar.positions  # type: ignore[attr-defined]
    assert bar.length == f.stat().st_size  # type: ignore[attr-defined]
    assert positions == sorted(positions) and len(set(positions)) >= 5  # a step per transaction, never back
    assert positions[-1] == f.stat().st_size  # the whole file, its comment and bad lines included


def test_the_cli_commits_are_durable_and_the_nodes_engine_is_unchanged(sqlite_store_url: str) -> None:
    # synchronous=FULL syncs the WAL at each commit: what `provide add` reports survives
    # a power loss. The node keeps NORMAL (its writes need no such promise).
    import anyio
    from sqlalchemy import text

    from dhtstore.data.engine import make_engine
    from dhtstore.provider.standalone import open_provide_list

    async def synchronous_levels() -> tuple[int, int]:
        async with open_provide_list(sqlite_store_url) as provider:
            engine = provider.store.engine  # type: ignore[attr-defined]
            async with engine.connect() as conn:
                cli_level = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
        node_engine = make_engine(sqlite_store_url)
        try:
            async with node_engine.connect() as conn:
                node_level = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
        finally:
            await node_engine.dispose()
        return cli_level, node_level

    assert anyio.run(synchronous_levels) == (2, 1)  # FULL, NORMAL


def test_add_from_stdin_in_windows(sqlite_store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dhtstore.cli.provide.IMPORT_WINDOW", 4)  # stdin has no size: progress counts CIDs
    lines = [cid_string(mh(i)) for i in range(10)] + [cid_string(mh(2)), "junk"]
    result = cli(sqlite_store_url, "add", "--from-file", "-", input="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.output
    assert "added 10, already listed 1, refused 1" in result.stdout and "line 12:" in result.stderr
