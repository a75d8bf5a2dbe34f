"""``dhtstore routing status``: the full routing table's crawl progress and census, from the store."""

from __future__ import annotations

import json
import time

import click
from sqlalchemy import text

from ..config import read_identity
from ..data.engine import OPEN_ERRORS, describe_open_error, redact
from ..data.schema import open_store
from ..errors import StoreError
from .common import Location, identity_option, location_options, run
from .group import main

TOP_AGENTS = 10


@main.group()
def routing() -> None:
    """The full routing table (``dhtstore run --routing-table full``)."""


@routing.command()
@location_options
@identity_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def status(where: Location, as_json: bool) -> None:
    """Peers in the full table, how many were crawled in the last hour, never crawled,
    failing, the oldest and newest crawl (UTC), the most common agents, and on a
    shared PostgreSQL store the crawl shards each head holds (this identity's first).

    --json fields: store, peers, crawled_last_hour, never_crawled, failing,
    oldest_crawl_utc, newest_crawl_utc, agents (agent -> servers, the top 10),
    head (this identity's peer id, null without its key), shards (the shard numbers
    this head holds), shards_by_head (peer id -> shard numbers, every live claim)."""
    run(_status, where, as_json)


async def _status(where: Location, as_json: bool) -> None:
    url = where.store_url()
    engine = await open_store(url)
    try:
        async with engine.connect() as conn:
            coverage = (await conn.execute(text("SELECT * FROM v_network_coverage"))).one()._asdict()
            agents = (
                await conn.execute(
                    text("SELECT agent, servers FROM v_network_agents ORDER BY servers DESC, agent LIMIT :n"), {"n": TOP_AGENTS}
                )
            ).all()
            held = await conn.execute(
                text("SELECT owner, shard FROM crawl_claims WHERE expires_at > :now ORDER BY owner, shard"), {"now": int(time.time())}
            )
            claims: dict[str, list[int]] = {}  # head (peer id) -> the crawl shards it holds
            for owner, shard in held:
                claims.setdefault(owner, []).append(shard)
    except OPEN_ERRORS as exc:
        raise StoreError(describe_open_error(url, exc)) from None
    finally:
        await engine.dispose()
    figures = {k: v if k.endswith("_utc") else (v or 0) for k, v in coverage.items()}  # sum() of no rows is NULL
    head = str(read_identity(where.identity_file).peer_id()) if where.identity_file.exists() else None
    mine = claims.get(head, []) if head else []
    if as_json:
        click.echo(json.dumps({
            "store": redact(url), **figures, "agents": {a or "(unknown)": n for a, n in agents},
            "head": head, "shards": mine, "shards_by_head": claims,
        }))
        return
    click.echo(f"store: {redact(url)}")
    click.echo(
        f"peers: {figures['peers']:,}  crawled in the last hour: {figures['crawled_last_hour']:,}"
        f"  never crawled: {figures['never_crawled']:,}  failing: {figures['failing']:,}"
    )
    click.echo(f"crawls: oldest {figures['oldest_crawl_utc'] or '-'}, newest {figures['newest_crawl_utc'] or '-'} (UTC)")
    for agent, servers in agents:
        click.echo(f"  {agent or '(unknown)':<40}  {servers:>10,}")
    if claims:
        click.echo(f"crawl shards held: {len(mine)} by this head ({where.identity}), {len(claims)} heads share the crawl")
        for owner, shards in sorted(claims.items(), key=lambda c: c[0] != head):
            click.echo(f"  {owner}{' (this head)' if owner == head else ''}: {' '.join(f'{s:x}' for s in shards)}")
