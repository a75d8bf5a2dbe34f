"""The full routing table: every DHT server the crawler found, and census views over it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Adds one table and five views, so every existing row is kept; the downgrade drops
them (the crawl rebuilds the table). Views (same columns on SQLite and PostgreSQL):

- ``v_network_agents``: servers by agent version (``agent``, ``servers``, ``responding``);
- ``v_network_protocols``: servers by protocol they announce (``protocol``, ``servers``);
- ``v_network_transports``: servers by address shape, e.g. ip4/tcp (``addr_kind``, ``servers``);
- ``v_network_peers``: the table with text times;
- ``v_network_coverage``: the crawl's progress (peers, crawled within the last hour, failing).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TEXT = {  # epoch seconds -> 'YYYY-MM-DD HH:MM:SS' UTC (as 0001)
    "sqlite": "datetime({0}, 'unixepoch')",
    "postgresql": "to_char(to_timestamp({0}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
}
# Servers per line of a newline-separated column: (column AS item, servers).
COUNT_LINES = {
    "sqlite": (
        "WITH RECURSIVE split(item, rest) AS ("
        " SELECT '', {col} || char(10) FROM network_peers"
        " UNION ALL SELECT substr(rest, 1, instr(rest, char(10)) - 1), substr(rest, instr(rest, char(10)) + 1)"
        " FROM split WHERE rest <> '')"
        " SELECT item AS {name}, count(*) AS servers FROM split WHERE item <> '' GROUP BY item"
    ),
    "postgresql": (
        "SELECT item AS {name}, count(*) AS servers"
        " FROM network_peers, unnest(string_to_array({col}, E'\\n')) AS item"
        " WHERE item <> '' GROUP BY item"
    ),
}
VIEWS = ("v_network_coverage", "v_network_peers", "v_network_transports", "v_network_protocols", "v_network_agents")


def upgrade() -> None:
    op.create_table(
        "network_peers",
        sa.Column("peer_id", sa.LargeBinary(), nullable=False),
        sa.Column("peer_id_text", sa.String(length=120), nullable=False),
        sa.Column("kad_key", sa.LargeBinary(), nullable=False),
        sa.Column("addrs", sa.LargeBinary(), nullable=False),
        sa.Column("addr_kinds", sa.Text(), nullable=False),
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("protocols", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_at", sa.BigInteger(), nullable=False),
        sa.Column("last_contact_at", sa.BigInteger(), nullable=True),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("crawled_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("peer_id", name=op.f("pk_network_peers")),
    )
    op.create_index(op.f("ix_network_peers_kad_key"), "network_peers", ["kad_key"], unique=True)
    op.create_index(op.f("ix_network_peers_crawled_at"), "network_peers", ["crawled_at"])

    dialect = op.get_bind().dialect.name
    utc = UTC_TEXT[dialect]
    op.execute(
        "CREATE VIEW v_network_agents AS SELECT agent, count(*) AS servers,"
        " sum(CASE WHEN failures = 0 THEN 1 ELSE 0 END) AS responding FROM network_peers GROUP BY agent"
    )
    op.execute("CREATE VIEW v_network_protocols AS " + COUNT_LINES[dialect].format(col="protocols", name="protocol"))
    op.execute("CREATE VIEW v_network_transports AS " + COUNT_LINES[dialect].format(col="addr_kinds", name="addr_kind"))
    op.execute(
        "CREATE VIEW v_network_peers AS SELECT peer_id_text AS peer_id, agent, addr_kinds, failures,"
        f" {utc.format('first_seen_at')} AS first_seen_utc, {utc.format('last_contact_at')} AS last_contact_utc,"
        f" {utc.format('crawled_at')} AS crawled_utc FROM network_peers"
    )
    op.execute(
        "CREATE VIEW v_network_coverage AS SELECT count(*) AS peers,"
        " sum(CASE WHEN crawled_at >= (SELECT now FROM clock) - 3600 THEN 1 ELSE 0 END) AS crawled_last_hour,"
        " sum(CASE WHEN crawled_at IS NULL THEN 1 ELSE 0 END) AS never_crawled,"
        " sum(CASE WHEN failures > 0 THEN 1 ELSE 0 END) AS failing,"
        f" {utc.format('min(crawled_at)')} AS oldest_crawl_utc, {utc.format('max(crawled_at)')} AS newest_crawl_utc"
        " FROM network_peers"
    )


def downgrade() -> None:
    for view in VIEWS:
        op.execute(f"DROP VIEW {view}")
    op.drop_index(op.f("ix_network_peers_crawled_at"), table_name="network_peers")
    op.drop_index(op.f("ix_network_peers_kad_key"), table_name="network_peers")
    op.drop_table("network_peers")
