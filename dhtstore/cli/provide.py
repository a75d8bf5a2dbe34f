"""``dhtstore provide``: edit and inspect the provide list, with or without a running node.

The commands write the store directly; a running node polls it and provides new keys
within seconds, and never reprovides removed ones.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import click

from ..kadkey import Key
from ..provider.api import AddResult, ProvideEntry, ProvideError, Provider, ProvideStatus
from ..provider.cids import multihash_of
from ..provider.standalone import open_provide_list
from .common import Location, location_options, run
from .group import main

IMPORT_BATCH = 10_000  # CIDs per transaction: each stays short (under a second at 3M) beside a running node
# CIDs read, then sorted by Kademlia key, before their transactions: each transaction
# then inserts into one slice of the kad_key index, a 20th of it, so it dirties fewer of
# its pages (on SQLite every dirtied page is written twice, to the WAL and by the
# checkpoint), and a region's rows lie together in the table, so the sweep's marking
# them provided dirties few pages too (``provider.providelist``). Two windows are held at
# a time (one written, one read), about 50 MB each.
IMPORT_WINDOW = 200_000
MAX_REPORTED_ERRORS = 20  # bad lines printed one by one; the rest are counted


@main.group()
def provide() -> None:
    """Edit and inspect the provide list (works while the node runs)."""


# --- add ----------------------------------------------------------------------------------


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    # readline, not iteration: a text file's tell() (the progress) fails once next() has run
    for number, line in enumerate(iter(stream.readline, ""), 1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield number, text


@provide.command("add")
@click.argument("cids", nargs=-1)
@click.option("--from-file", "from_file", type=click.File("r", lazy=True), help="One CID per line ('-' for stdin).")
@location_options
def add(where: Location, cids: tuple[str, ...], from_file: IO[str] | None) -> None:
    """Add CIDs to the provide list; the node provides them within seconds.

    Bad lines are reported with their line numbers and the rest are imported.
    """
    if not cids and from_file is None:
        raise click.UsageError("give CIDs, or --from-file FILE")
    run(_add, where, cids, from_file)


async def _add(where: Location, cids: tuple[str, ...], from_file: IO[str] | None) -> None:
    sources: list[tuple[str, Iterator[tuple[int, str]]]] = []
    if cids:
        sources.append(("argument", iter(enumerate(cids, 1))))
    if from_file is not None:
        sources.append(("line", _lines(from_file)))
    bad = 0
    total = AddResult(0, 0)
    size = _file_size(from_file)
    read = 0  # bytes of the file read so far, when its size is known
    # Parsing (this thread) and inserting (the driver's thread) overlap: the next window
    # is read while the last is written; no buffer, so at most two windows are held.
    send, receive = anyio.create_memory_object_stream[tuple[list[tuple[str, bytes]], int]](0)

    async def write(provider: Provider, bar: Any) -> None:
        nonlocal total
        async with receive:
            async for window, progress in receive:
                shown = 0
                for start in range(0, len(window), IMPORT_BATCH):
                    batch = window[start : start + IMPORT_BATCH]
                    total = _sum(total, await provider.add_entries(batch))
                    # the window's progress shared out over its transactions
                    done = progress * (start + len(batch)) // len(window)
                    bar.update(done - shown)
                    shown = done

    def progress(what: str, window: list[tuple[str, bytes]]) -> int:
        """The bar's advance for a window: bytes of a file of known size, else CIDs."""
        nonlocal read
        if size is None:
            return len(window)
        if what != "line" or from_file is None:
            return 0
        try:
            position = from_file.tell()
        except (OSError, ValueError):
            return 0
        advance, read = position - read, position
        return advance

    async with open_provide_list(where.store_url()) as provider:
        known = size is not None or from_file is None
        length = size if size is not None else len(cids) if from_file is None else sys.maxsize
        with click.progressbar(
            length=length, label="importing", file=sys.stderr, show_pos=not known, show_percent=known, show_eta=known
        ) as bar:
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, provider, bar)
                async with send:
                    for what, items in sources:
                        window: list[tuple[str, bytes]] = []
                        for number, text in items:
                            try:
                                window.append((text, multihash_of(text)))
                            except ProvideError as exc:
                                bad += 1
                                if bad <= MAX_REPORTED_ERRORS:
                                    click.echo(f"{what} {number}: {exc}", err=True)
                            if len(window) >= IMPORT_WINDOW:
                                window.sort(key=_by_kad)
                                await send.send((window, progress(what, window)))
                                window = []
                        if window:
                            window.sort(key=_by_kad)
                            await send.send((window, progress(what, window)))
    if bad > MAX_REPORTED_ERRORS:
        click.echo(f"… and {bad - MAX_REPORTED_ERRORS} more bad lines", err=True)
    click.echo(f"added {total.added}, already listed {total.present}, refused {bad}")
    if bad and not total.added and not total.present:
        sys.exit(1)


def _by_kad(entry: tuple[str, bytes]) -> bytes:
    return Key.for_multihash(entry[1]).to_bytes()


def _file_size(stream: IO[str] | None) -> int | None:
    name = getattr(stream, "name", None)
    if stream is None or name in (None, "-", "<stdin>"):
        return None
    try:
        return Path(name).stat().st_size
    except OSError:
        return None


def _sum(a: AddResult, b: AddResult) -> AddResult:
    return AddResult(a.added + b.added, a.present + b.present)


# --- rm -------------------------------------------------------------------------------------


@provide.command("rm")
@click.argument("cids", nargs=-1, required=True)
@location_options
def rm(where: Location, cids: tuple[str, ...]) -> None:
    """Remove CIDs from the provide list; they are never reprovided again."""
    valid: list[str] = []
    multihashes: set[bytes] = set()
    for number, cid in enumerate(cids, 1):
        try:
            multihashes.add(multihash_of(cid))
            valid.append(cid)
        except ProvideError as exc:
            click.echo(f"argument {number}: {exc}", err=True)
    removed = run(_rm, where, valid) if valid else 0
    click.echo(f"removed {removed}, not listed {len(multihashes) - removed}, refused {len(cids) - len(valid)}")
    if len(valid) < len(cids):
        sys.exit(1)


async def _rm(where: Location, cids: list[str]) -> int:
    async with open_provide_list(where.store_url()) as provider:
        return await provider.stop_provide(cids)


# --- ls ----------------------------------------------------------------------------------------


def _entry_json(e: ProvideEntry) -> dict[str, object]:
    return {
        "cid": e.cid,
        "multihash": e.multihash.hex(),
        "state": e.state.value,
        "added_at": e.added_at.isoformat(),
        "last_provided_at": e.last_provided_at.isoformat() if e.last_provided_at else None,
        "next_due_at": e.next_due_at.isoformat(),
        "attempts": e.attempts,
        "last_error": e.last_error,
    }


@provide.command("ls")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Entries per page.")
@click.option("--after", metavar="HEX", help="Start after this multihash (hex): the 'next' value of the previous page.")
@click.option("--all", "everything", is_flag=True, help="Every entry, streamed (ignores --limit).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one entry per line, then a {'next': …} line.")
@location_options
def ls(where: Location, limit: int, after: str | None, everything: bool, as_json: bool) -> None:
    """List the provide list with each key's state, a page at a time."""
    try:
        cursor = bytes.fromhex(after) if after else None
    except ValueError:
        raise click.BadParameter("not hex", param_hint="--after") from None
    run(_ls, where, cursor, None if everything else limit, as_json)


async def _ls(where: Location, after: bytes | None, limit: int | None, as_json: bool) -> None:
    shown = 0
    last: bytes | None = None
    async with open_provide_list(where.store_url()) as provider:
        async for e in provider.provide_list(after, limit):
            shown += 1
            last = e.multihash
            if as_json:
                click.echo(json.dumps(_entry_json(e)))
            else:
                provided = e.last_provided_at.strftime("%Y-%m-%d %H:%M") if e.last_provided_at else "-"
                error = f"  {e.last_error}" if e.last_error else ""
                click.echo(f"{e.cid}  {e.state.value:<8}  provided {provided}  due {e.next_due_at:%Y-%m-%d %H:%M}{error}")
    more = limit is not None and shown == limit
    if as_json:
        click.echo(json.dumps({"next": last.hex() if more and last else None}))
    elif more and last:
        click.echo(f"-- more: dhtstore provide ls --after {last.hex()}", err=True)


# --- status ----------------------------------------------------------------------------------------


@provide.command("status")
@click.option("--json", "as_json", is_flag=True)
@location_options
def status(where: Location, as_json: bool) -> None:
    """Keys in the list, provided within the interval, overdue, failing, the current region, the cycle's end."""
    s = run(_status, where)
    if as_json:
        click.echo(json.dumps(_status_json(s)))
        return
    when = s.expected_cycle_end.strftime("%Y-%m-%d %H:%M:%S UTC") if s.expected_cycle_end else "-"
    click.echo(f"keys                      {s.keys}")
    click.echo(f"pending (never provided)  {s.pending}")
    click.echo(f"{'provided within ' + format(s.interval_seconds / 3600, 'g') + ' h':<26}{s.provided_within_interval}")
    click.echo(f"overdue                   {s.overdue}")
    click.echo(f"failing                   {s.failing}")
    click.echo(f"regions                   {s.regions}")
    click.echo(f"current region            {s.current_region or '-'}")
    click.echo(f"expected end of cycle     {when}")
    if s.falling_behind:
        click.echo("WARNING: falling behind: the node cannot provide every key within the interval", err=True)


def _status_json(s: ProvideStatus) -> dict[str, object]:
    return {
        "keys": s.keys,
        "pending": s.pending,
        "provided_within_interval": s.provided_within_interval,
        "overdue": s.overdue,
        "failing": s.failing,
        "regions": s.regions,
        "current_region": s.current_region,
        "cycle_started_at": s.cycle_started_at.isoformat() if s.cycle_started_at else None,
        "expected_cycle_end": s.expected_cycle_end.isoformat() if s.expected_cycle_end else None,
        "falling_behind": s.falling_behind,
        "interval_seconds": s.interval_seconds,
    }


async def _status(where: Location) -> ProvideStatus:
    async with open_provide_list(where.store_url()) as provider:
        return await provider.status()
