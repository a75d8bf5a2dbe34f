"""Provider quota views: how full each provider's and each key's quota is, in plain SQL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

Adds two views over the live provider records (the store's quotas, ``ProviderQuotas``,
are counted on these rows): ``v_provider_usage``, records per provider peer, and
``v_key_providers``, providers per key. Views only: every row is kept, and the
downgrade drops them.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE VIEW v_provider_usage AS SELECT"
        " p.peer_id_text AS peer_id, count(*) AS records, min(r.received_at) AS first_received_at,"
        " max(r.received_at) AS last_received_at"
        " FROM provider_records r LEFT JOIN peers p ON p.peer_id = r.peer_id, clock"
        " WHERE r.expires_at > clock.now"
        " GROUP BY r.peer_id, p.peer_id_text"
    )
    op.execute(
        "CREATE VIEW v_key_providers AS SELECT"
        " r.key_b58 AS key_b58, count(*) AS providers"
        " FROM provider_records r, clock"
        " WHERE r.expires_at > clock.now"
        " GROUP BY r.key_mh, r.key_b58"
    )


def downgrade() -> None:
    op.execute("DROP VIEW v_key_providers")
    op.execute("DROP VIEW v_provider_usage")
