"""The provide list's ids never reused on SQLite: ``provided_keys`` becomes AUTOINCREMENT.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

A node answers "do I provide this key?" from an in-memory filter of the provide list,
kept current by reading the rows whose id is above the last one it saw
(``provider.listfilter``). That is exact only if a new row always gets an id above
every id handed out before. A plain SQLite INTEGER PRIMARY KEY takes max(rowid) + 1, so
deleting the top rows and adding others reuses their ids, and the filter would miss
the new keys; with AUTOINCREMENT SQLite never reuses an id (``sqlite_sequence``), and
its single writer commits ids in order.

SQLite changes a table's AUTOINCREMENT only by recreating it: the batch copy keeps every
row, its id, and the indexes. PostgreSQL's id is already a sequence that never goes
back (the filter is not used there: its transactions commit ids out of order), so
nothing changes on it. The downgrade recreates the table without AUTOINCREMENT.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "provided_keys", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def upgrade() -> None:
    _recreate(autoincrement=True)


def downgrade() -> None:
    _recreate(autoincrement=False)
