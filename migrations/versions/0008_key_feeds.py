"""Key feeds: on PostgreSQL, every new key of ``provider_records`` and of
``provided_keys`` is announced on a notification channel as it commits.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

A store shared by several processes could keep no negative filter of its provider
records' keys or of the provide list (a GET_PROVIDERS miss, most of them, cost two
queries): each process saw only its own writes, and PostgreSQL commits ids out of
order, so the list could not be followed by id as on SQLite. With this revision a
statement trigger on each table sends the keys each ``INSERT`` added (its transition
table: rows that an upsert updated are not in it) as ``pg_notify`` payloads, on the
channels ``dhtstore_provider_keys`` (``provider_records.key_mh``) and
``dhtstore_provided_keys`` (``provided_keys.multihash``): hex keys joined by commas, at
most 40 a payload (80-byte keys make 6.5 kB, under PostgreSQL's 8,000-byte limit). A trigger, not
the store's code, so that every writer is seen: other processes, ``db copy``, plain
SQL. PostgreSQL delivers a transaction's notifications when it commits, in commit
order, so a process that listens and then scans the table misses no key
(``data.keyfeed``).

SQLite needs none of this (one writer process, whose filter sees its own writes). No
row changes; the downgrade drops the triggers and their functions.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS_PER_PAYLOAD = 40
# (table, key column, channel, trigger, function)
FEEDS = [
    ("provider_records", "key_mh", "dhtstore_provider_keys", "provider_records_key_feed", "provider_keys_notify"),
    ("provided_keys", "multihash", "dhtstore_provided_keys", "provided_keys_key_feed", "provided_keys_notify"),
]


def _function(column: str, channel: str, function: str) -> str:
    return f"""
CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    FOR payload IN
        SELECT string_agg(encode({column}, 'hex'), ',')
        FROM (SELECT {column}, (row_number() OVER ()) / {KEYS_PER_PAYLOAD} AS part
              FROM (SELECT DISTINCT {column} FROM added) AS keys) AS numbered
        GROUP BY part
    LOOP
        PERFORM pg_notify('{channel}', payload);
    END LOOP;
    RETURN NULL;
END
$$
"""


def _trigger(table: str, trigger: str, function: str) -> str:
    return (
        f"CREATE TRIGGER {trigger} AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column, channel, trigger, function in FEEDS:
            op.execute(_function(column, channel, function))
            op.execute(_trigger(table, trigger, function))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, _column, _channel, trigger, function in FEEDS:
            op.execute(f"DROP TRIGGER {trigger} ON {table}")
            op.execute(f"DROP FUNCTION {function}()")
