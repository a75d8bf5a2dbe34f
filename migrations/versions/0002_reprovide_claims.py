"""Reprovide claims: the keyspace slices each process of a shared store is providing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Adds one table, so every existing row is kept; the downgrade drops it (claims are
leases of a few minutes: nothing of value is lost). An older node on a store at this
revision is refused by its revision check, so it never reprovides beside claimers
without claiming.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reprovide_claims",
        sa.Column("region", sa.String(length=260), nullable=False),
        sa.Column("first_key", sa.LargeBinary(), nullable=False),
        sa.Column("last_key", sa.LargeBinary(), nullable=False),
        sa.Column("owner", sa.String(length=120), nullable=False),
        sa.Column("claimed_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("region", name=op.f("pk_reprovide_claims")),
    )


def downgrade() -> None:
    op.drop_table("reprovide_claims")
