"""Provide counters: the provide list's sizes kept as it changes, so a status is not a scan.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

``provide status`` counted ``provided_keys`` with filters, a scan of the whole list (10M
rows: seconds). This revision keeps the counts that do not depend on the clock in a
table, ``provide_counters`` (keys, never provided, failing), and indexes
``last_provided_at`` (with ``added_at``) so the counts that do (provided within the
interval, stale) are index range counts over the few keys that are late.

Triggers keep the counters, not the store's code, because every writer of
``provided_keys`` must count: the sweep, ``provide add/rm``, ``db copy`` into the store,
plain SQL; and a trigger sees each row's old and new values under the row's lock, inside
the writing transaction, so the counts are exact whatever the isolation level and
however many processes write. Per dialect:

- SQLite has one writer at a time, so row triggers update one row (``id = 0``). The
  update trigger fires only when a key changes state (``WHEN``), not on every reprovide.
- PostgreSQL lets several processes write at once: a single counter row would make every
  writing transaction wait for the previous one's commit (and could deadlock two of
  them). Statement triggers with transition tables instead insert one row of deltas per
  statement that changes a count; a reader sums the rows, and the store folds them into
  one now and then (``provider.providelist``).

The upgrade fills the counters from the rows present (under the table's lock on
PostgreSQL, since ``CREATE TRIGGER`` takes it). Every row is kept; the downgrade drops
the triggers, the table and the index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILING = 3  # provider.api.FAILING_AFTER_ATTEMPTS when this revision was written
INDEX = "ix_provided_keys_last_provided_at_added_at"


def _flag(row: str, condition: str) -> str:
    return f"(CASE WHEN {row}.{condition} THEN 1 ELSE 0 END)"


def _sqlite_triggers() -> list[str]:
    def set_(sign: str, row: str) -> str:
        return (
            f"UPDATE provide_counters SET keys = keys {sign} 1,"
            f" pending = pending {sign} {_flag(row, 'last_provided_at IS NULL')},"
            f" failing = failing {sign} {_flag(row, f'attempts >= {FAILING}')} WHERE id = 0;"
        )

    changed = (
        f"((OLD.last_provided_at IS NULL) <> (NEW.last_provided_at IS NULL)"
        f" OR (OLD.attempts >= {FAILING}) <> (NEW.attempts >= {FAILING}))"
    )
    return [
        f"CREATE TRIGGER provide_counters_insert AFTER INSERT ON provided_keys BEGIN {set_('+', 'NEW')} END",
        f"CREATE TRIGGER provide_counters_delete AFTER DELETE ON provided_keys BEGIN {set_('-', 'OLD')} END",
        (
            "CREATE TRIGGER provide_counters_update AFTER UPDATE OF last_provided_at, attempts ON provided_keys"
            f" WHEN {changed} BEGIN UPDATE provide_counters SET"
            f" pending = pending + {_flag('NEW', 'last_provided_at IS NULL')} - {_flag('OLD', 'last_provided_at IS NULL')},"
            f" failing = failing + {_flag('NEW', f'attempts >= {FAILING}')} - {_flag('OLD', f'attempts >= {FAILING}')}"
            " WHERE id = 0; END"
        ),
    ]


_PG_FUNCTION = f"""
CREATE FUNCTION provide_counters_delta() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    dk bigint := 0;
    dp bigint := 0;
    df bigint := 0;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT dk + count(*), dp + count(*) FILTER (WHERE last_provided_at IS NULL),
               df + count(*) FILTER (WHERE attempts >= {FAILING})
          INTO dk, dp, df FROM new_rows;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        SELECT dk - count(*), dp - count(*) FILTER (WHERE last_provided_at IS NULL),
               df - count(*) FILTER (WHERE attempts >= {FAILING})
          INTO dk, dp, df FROM old_rows;
    END IF;
    IF dk <> 0 OR dp <> 0 OR df <> 0 THEN
        INSERT INTO provide_counters (keys, pending, failing) VALUES (dk, dp, df);
    END IF;
    RETURN NULL;
END $$
"""

_PG_TRIGGERS = [
    f"CREATE TRIGGER provide_counters_{event} AFTER {event.upper()} ON provided_keys"
    f" REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION provide_counters_delta()"
    for event, tables in (
        ("insert", "NEW TABLE AS new_rows"),
        ("delete", "OLD TABLE AS old_rows"),
        ("update", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    )
]

_FILL = (
    "INSERT INTO provide_counters (id, keys, pending, failing) SELECT 0, count(*),"
    " coalesce(sum(CASE WHEN last_provided_at IS NULL THEN 1 ELSE 0 END), 0),"
    f" coalesce(sum(CASE WHEN attempts >= {FAILING} THEN 1 ELSE 0 END), 0) FROM provided_keys"
)


def upgrade() -> None:
    op.create_table(
        "provide_counters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("keys", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.Column("failing", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provide_counters")),
    )
    op.create_index(INDEX, "provided_keys", ["last_provided_at", "added_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE provided_keys IN SHARE ROW EXCLUSIVE MODE")  # no write between the fill and the triggers
        op.execute(_PG_FUNCTION)
        for trigger in _PG_TRIGGERS:
            op.execute(trigger)
    else:
        for trigger in _sqlite_triggers():
            op.execute(trigger)
    op.execute(_FILL)


def downgrade() -> None:
    for name in ("provide_counters_update", "provide_counters_delete", "provide_counters_insert"):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER {name} ON provided_keys")
        else:
            op.execute(f"DROP TRIGGER {name}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION provide_counters_delta()")
    op.drop_index(INDEX, table_name="provided_keys")
    op.drop_table("provide_counters")
