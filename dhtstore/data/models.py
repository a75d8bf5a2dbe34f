"""Every table of the store, as SQLAlchemy 2 typed models.

Conventions, chosen so that plain SQL reads the same in ``sqlite3`` and ``psql``:
- times are integer seconds since the Unix epoch (UTC), columns named ``*_at``; the
  ``clock`` view (created by the migrations) gives ``now`` in the same unit;
- binary ids (multihashes, peer ids, Kademlia keys) are BLOB/BYTEA, and each one a
  person looks up has a text twin (base58btc peer id, CID / base58 multihash).

Alembic owns the schema: the revisions create exactly these tables, and a test
checks that autogenerate finds no difference. Change a model only together with a new
revision.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so that migrations can name what they alter or drop.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Epoch = BigInteger  # seconds since 1970-01-01 UTC


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ProviderRecordRow(Base):
    """``peer_id`` provides ``key`` until ``expires_at`` (48 h after its last announcement).

    The primary key (key_mh, peer_id) serves "providers of K" and makes re-announcing an
    upsert; the ``expires_at`` index serves the expiry sweep. The provider's addresses
    live in ``peers``.
    """

    __tablename__ = "provider_records"
    __table_args__ = (
        Index("ix_provider_records_expires_at", "expires_at"),
        {"sqlite_with_rowid": False},
    )

    key_mh: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)  # the multihash
    peer_id: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    # base58btc of the multihash: for sha2-256 this is the content's CIDv0 ("Qm…").
    key_b58: Mapped[str] = mapped_column(String(120))
    received_at: Mapped[int] = mapped_column(Epoch)
    expires_at: Mapped[int] = mapped_column(Epoch)


class PeerRow(Base):
    """What we know about a peer: addresses (with their own expiry), protocols, agent."""

    __tablename__ = "peers"

    peer_id: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    peer_id_text: Mapped[str] = mapped_column(String(120), index=True)  # base58btc
    # Binary multiaddrs, each prefixed with its uvarint length (the wire form, concatenated).
    addrs: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    addrs_expire_at: Mapped[int] = mapped_column(Epoch, default=0)
    protocols: Mapped[str] = mapped_column(Text, default="")  # newline-separated protocol ids
    agent: Mapped[str] = mapped_column(Text, default="")
    first_seen_at: Mapped[int] = mapped_column(Epoch)
    last_seen_at: Mapped[int] = mapped_column(Epoch)


class ProvidedKeyRow(Base):
    """One entry of the node's own provide list and its reprovide schedule.

    ``multihash`` is unique: CIDv0 and CIDv1 of one multihash are one DHT key, hence one
    entry. ``kad_key`` (SHA-256 of the multihash) is indexed for the sweep's prefix
    range queries.
    """

    __tablename__ = "provided_keys"
    # Ids never reused (revision 0005): the provide list's filter follows the list by id.
    # Status counts of late keys by index range (revision 0006): provided long ago, or
    # never and added long ago.
    __table_args__ = (
        Index("ix_provided_keys_last_provided_at_added_at", "last_provided_at", "added_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cid: Mapped[str] = mapped_column(String(200))
    multihash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    kad_key: Mapped[bytes] = mapped_column(LargeBinary, index=True)
    added_at: Mapped[int] = mapped_column(Epoch)
    last_provided_at: Mapped[int | None] = mapped_column(Epoch)
    next_due_at: Mapped[int] = mapped_column(Epoch, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)


class ProvideCounterRow(Base):
    """Counts of ``provided_keys`` kept by triggers (revision 0005): the sum over the rows
    is the count. SQLite keeps one row (``id = 0``); PostgreSQL adds a row of deltas per
    writing statement, folded now and then by the store. Derived from ``provided_keys``,
    so ``db copy`` leaves it to the target's triggers (``info["derived"]``)."""

    __tablename__ = "provide_counters"
    __table_args__ = ({"info": {"derived": True}},)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    keys: Mapped[int] = mapped_column(BigInteger)
    pending: Mapped[int] = mapped_column(BigInteger)  # never provided
    failing: Mapped[int] = mapped_column(BigInteger)  # attempts >= FAILING_AFTER_ATTEMPTS


class RoutingSnapshotRow(Base):
    """A saved routing table, so a restarted node does not start from nothing."""

    __tablename__ = "routing_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    local_peer_id: Mapped[bytes] = mapped_column(LargeBinary)
    taken_at: Mapped[int] = mapped_column(Epoch, index=True)


class RoutingSnapshotPeerRow(Base):
    __tablename__ = "routing_snapshot_peers"

    snapshot_id: Mapped[int] = mapped_column(
        ForeignKey("routing_snapshots.id", ondelete="CASCADE"), primary_key=True
    )
    peer_id: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    peer_id_text: Mapped[str] = mapped_column(String(120))
    addrs: Mapped[bytes] = mapped_column(LargeBinary, default=b"")  # as in peers.addrs
    added_at: Mapped[int] = mapped_column(Epoch)  # when it entered the routing table


class ValueRecordRow(Base):
    """A validated value record (``/pk/…``, ``/ipns/…``) as received."""

    __tablename__ = "value_records"

    record_key: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    # The key with its binary part in base58btc, e.g. "/ipns/12D3KooW…".
    record_key_text: Mapped[str] = mapped_column(Text)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[int] = mapped_column(Epoch, index=True)


class ReprovideRegionRow(Base):
    """The sweep reprovider's schedule: one keyspace region (a Kademlia-key prefix).

    ``prefix`` is a 32-byte Kademlia key whose bits past ``prefix_len`` are zero, so the
    region's provided keys are ``prefix <= kad_key <= prefix | ones``.
    """

    __tablename__ = "reprovide_regions"

    prefix: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    prefix_len: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_due_at: Mapped[int] = mapped_column(Epoch, index=True)
    last_run_at: Mapped[int | None] = mapped_column(Epoch)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)


class ReprovideClaimRow(Base):
    """A slice of the keyspace one process of a shared store is providing now.

    ``region`` is the prefix as a bit string ("0110*"; "*" is the whole keyspace) and
    ``first_key``..``last_key`` its range of Kademlia keys, so "keys nobody else has
    claimed" is one range test. A claim lives until ``expires_at``; its owner renews it
    while it works, so a process that dies has its slice taken over after the lease.
    """

    __tablename__ = "reprovide_claims"

    region: Mapped[str] = mapped_column(String(260), primary_key=True)
    first_key: Mapped[bytes] = mapped_column(LargeBinary)
    last_key: Mapped[bytes] = mapped_column(LargeBinary)
    owner: Mapped[str] = mapped_column(String(120))  # the claiming node's peer id (base58)
    claimed_at: Mapped[int] = mapped_column(Epoch)
    expires_at: Mapped[int] = mapped_column(Epoch)


class NetworkPeerRow(Base):
    """A DHT server of the network, as the crawler found it: the full routing table.

    The table is the network's, not one identity's: every node of a store reads it.
    ``kad_key`` (SHA-256 of the peer id) is unique and indexed, so "the n closest to K"
    is a range scan on both sides of K and "every peer under prefix P" one range query.
    ``failures`` counts consecutive failed contacts; the peer leaves at the table's limit.
    ``addr_kinds`` lists the distinct shapes of its addresses ("ip4/tcp", "ip6/udp/quic-v1"),
    one per line, for the census views.
    """

    __tablename__ = "network_peers"

    peer_id: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    peer_id_text: Mapped[str] = mapped_column(String(120))  # base58btc
    kad_key: Mapped[bytes] = mapped_column(LargeBinary, unique=True, index=True)
    addrs: Mapped[bytes] = mapped_column(LargeBinary, default=b"")  # as in peers.addrs
    addr_kinds: Mapped[str] = mapped_column(Text, default="")
    agent: Mapped[str] = mapped_column(Text, default="")
    protocols: Mapped[str] = mapped_column(Text, default="")  # newline-separated protocol ids
    first_seen_at: Mapped[int] = mapped_column(Epoch)
    last_seen_at: Mapped[int] = mapped_column(Epoch, index=True)  # set at every write: what others read in
    last_contact_at: Mapped[int | None] = mapped_column(Epoch)  # last successful request
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    crawled_at: Mapped[int | None] = mapped_column(Epoch, index=True)


class CrawlHeadRow(Base):
    """A head (node identity) of the store that takes part in the shared crawl of the
    full routing table, until ``expires_at``: the others count it in their fair share."""

    __tablename__ = "crawl_heads"

    owner: Mapped[str] = mapped_column(String(120), primary_key=True)  # peer id (base58)
    started_at: Mapped[int] = mapped_column(Epoch)
    expires_at: Mapped[int] = mapped_column(Epoch)


class CrawlClaimRow(Base):
    """One shard of the crawl (the Kademlia keys under the ``shard_bits``-bit prefix
    ``shard``) and the head crawling it, leased until ``expires_at``."""

    __tablename__ = "crawl_claims"

    shard_bits: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(120))
    claimed_at: Mapped[int] = mapped_column(Epoch)
    expires_at: Mapped[int] = mapped_column(Epoch)


class ProviderStateRow(Base):
    """Small named values the reprovider persists (cycle start, counters, …)."""

    __tablename__ = "provider_state"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[int] = mapped_column(Epoch)


metadata = Base.metadata
