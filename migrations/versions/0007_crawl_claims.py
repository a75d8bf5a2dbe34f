"""Crawl claims: the heads of a shared store split the full routing table's crawl.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Adds two tables and one index, so every existing row is kept; the downgrade drops
them (both tables hold leases of a few minutes: nothing of value is lost).

- ``crawl_heads``: each head (node identity) of the store that crawls, with the
  expiry of its lease, so the others know how many share the crawl;
- ``crawl_claims``: which head crawls which shard of the keyspace (a shard is the
  Kademlia keys under one ``shard_bits``-bit prefix) until when;
- ``ix_network_peers_last_seen_at``: each head reads in the rows the others wrote
  since its last look (``last_seen_at`` is set at every write).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crawl_heads",
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_crawl_heads")),
    )
    op.create_table(
        "crawl_claims",
        sa.Column("shard_bits", sa.Integer(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("claimed_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("shard_bits", "shard", name=op.f("pk_crawl_claims")),
    )
    op.create_index(op.f("ix_network_peers_last_seen_at"), "network_peers", ["last_seen_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_network_peers_last_seen_at"), table_name="network_peers")
    op.drop_table("crawl_claims")
    op.drop_table("crawl_heads")
