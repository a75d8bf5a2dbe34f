"""Initial schema: every table, plus the views that make the store readable in plain SQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Views (per dialect, same columns on both):
- ``clock(now)``: the current time in epoch seconds, so a query compares ``*_at``
  columns with ``clock.now`` the same way in sqlite3 and psql;
- ``v_provider_records``: provider records with the peer id in base58 and UTC times.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW_SECONDS = {
    "sqlite": "CAST(strftime('%s', 'now') AS INTEGER)",
    "postgresql": "CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)",
}
UTC_TEXT = {  # epoch seconds -> 'YYYY-MM-DD HH:MM:SS' UTC
    "sqlite": "datetime({0}, 'unixepoch')",
    "postgresql": "to_char(to_timestamp({0}) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')",
}


def upgrade() -> None:
    op.create_table(
        "peers",
        sa.Column("peer_id", sa.LargeBinary(), nullable=False),
        sa.Column("peer_id_text", sa.String(length=120), nullable=False),
        sa.Column("addrs", sa.LargeBinary(), nullable=False),
        sa.Column("addrs_expire_at", sa.BigInteger(), nullable=False),
        sa.Column("protocols", sa.Text(), nullable=False),
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("peer_id", name=op.f("pk_peers")),
    )
    op.create_index(op.f("ix_peers_peer_id_text"), "peers", ["peer_id_text"])

    op.create_table(
        "provided_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cid", sa.String(length=200), nullable=False),
        sa.Column("multihash", sa.LargeBinary(), nullable=False),
        sa.Column("kad_key", sa.LargeBinary(), nullable=False),
        sa.Column("added_at", sa.BigInteger(), nullable=False),
        sa.Column("last_provided_at", sa.BigInteger(), nullable=True),
        sa.Column("next_due_at", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provided_keys")),
        sa.UniqueConstraint("multihash", name=op.f("uq_provided_keys_multihash")),
    )
    op.create_index(op.f("ix_provided_keys_kad_key"), "provided_keys", ["kad_key"])
    op.create_index(op.f("ix_provided_keys_next_due_at"), "provided_keys", ["next_due_at"])

    op.create_table(
        "provider_records",
        sa.Column("key_mh", sa.LargeBinary(), nullable=False),
        sa.Column("peer_id", sa.LargeBinary(), nullable=False),
        sa.Column("key_b58", sa.String(length=120), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_mh", "peer_id", name=op.f("pk_provider_records")),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_provider_records_expires_at", "provider_records", ["expires_at"])

    op.create_table(
        "provider_state",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_provider_state")),
    )

    op.create_table(
        "reprovide_regions",
        sa.Column("prefix", sa.LargeBinary(), nullable=False),
        sa.Column("prefix_len", sa.Integer(), nullable=False),
        sa.Column("next_due_at", sa.BigInteger(), nullable=False),
        sa.Column("last_run_at", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("prefix", "prefix_len", name=op.f("pk_reprovide_regions")),
    )
    op.create_index(op.f("ix_reprovide_regions_next_due_at"), "reprovide_regions", ["next_due_at"])

    op.create_table(
        "routing_snapshots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("local_peer_id", sa.LargeBinary(), nullable=False),
        sa.Column("taken_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_snapshots")),
    )
    op.create_index(op.f("ix_routing_snapshots_taken_at"), "routing_snapshots", ["taken_at"])

    op.create_table(
        "routing_snapshot_peers",
        sa.Column("snapshot_id", sa.Integer(), nullable=False),
        sa.Column("peer_id", sa.LargeBinary(), nullable=False),
        sa.Column("peer_id_text", sa.String(length=120), nullable=False),
        sa.Column("addrs", sa.LargeBinary(), nullable=False),
        sa.Column("added_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["routing_snapshots.id"],
            name=op.f("fk_routing_snapshot_peers_snapshot_id_routing_snapshots"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("snapshot_id", "peer_id", name=op.f("pk_routing_snapshot_peers")),
    )

    op.create_table(
        "value_records",
        sa.Column("record_key", sa.LargeBinary(), nullable=False),
        sa.Column("record_key_text", sa.Text(), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("record_key", name=op.f("pk_value_records")),
    )
    op.create_index(op.f("ix_value_records_received_at"), "value_records", ["received_at"])

    dialect = op.get_bind().dialect.name
    op.execute(f"CREATE VIEW clock AS SELECT {NOW_SECONDS[dialect]} AS now")
    utc = UTC_TEXT[dialect]
    op.execute(
        "CREATE VIEW v_provider_records AS SELECT"
        " r.key_b58 AS key_b58, p.peer_id_text AS peer_id,"
        f" {utc.format('r.received_at')} AS received_utc, {utc.format('r.expires_at')} AS expires_utc,"
        " r.received_at AS received_at, r.expires_at AS expires_at"
        " FROM provider_records r LEFT JOIN peers p ON p.peer_id = r.peer_id"
    )


def downgrade() -> None:
    op.execute("DROP VIEW v_provider_records")
    op.execute("DROP VIEW clock")
    for table in (
        "value_records",
        "routing_snapshot_peers",
        "routing_snapshots",
        "reprovide_regions",
        "provider_state",
        "provider_records",
        "provided_keys",
        "peers",
    ):
        op.drop_table(table)
