"""Claim batches of work items (rows) across replicas, with leases that expire, on the database's clock.

A work item is a row with an owner column and a lease-until column. ``claim_batch`` hands out claimable
rows (unowned, or whose lease has expired) so that no two replicas ever hold the same row, and a crashed
replica's rows come back once its lease runs out::

    spec = ClaimSpec(items, items.c.id, items.c.claimed_by, items.c.claimed_until,
                     order_by=(items.c.created_at, items.c.id))
    ids = await claim_batch(engine, spec, owner=token, limit=100, lease_seconds=60,
                            where=items.c.done_at.is_(None))
    ...
    # complete with your own UPDATE, fenced: it only lands while this owner still holds the lease
    await conn.execute(update(items).where(spec.owned(token, ids)).values(done_at=db_utc_now()))

Use an owner token unique to the run (``f"{node}:{uuid4()}"``), not just the node name: fencing compares
owners, so a restarted process reusing its name could otherwise write over its predecessor's claims.

Every "now" is the database's clock (:func:`db_utc_now`), never this node's, so replicas with skewed
clocks agree on when a lease ends.

SQL per engine:

* PostgreSQL, MariaDB >= 10.6, MySQL >= 8.0.1, in one transaction::

      SELECT id FROM t WHERE (owner IS NULL OR until < <now>) AND <where> ORDER BY ... LIMIT n
          FOR UPDATE SKIP LOCKED
      UPDATE t SET owner = :owner, until = <now + lease> WHERE id IN (...) AND (owner IS NULL OR until < <now>)

  (on PostgreSQL ``id = ANY(:ids)``, one array parameter).

  Older MariaDB/MySQL get plain ``FOR UPDATE`` (claimers queue behind each other) and a logged warning.
* SQLite (one writer at a time), one statement::

      UPDATE t SET owner = :owner, until = <now + lease>
       WHERE id IN (SELECT id FROM t WHERE <claimable> AND <where> ORDER BY ... LIMIT n) RETURNING id

  RETURNING has no order: the ``order_by`` columns come back too and Python sorts the ids as SQLite would
  (an ``order_by`` Python cannot mimic gets a ``SELECT id ... WHERE id IN (...) ORDER BY ...`` instead).
  SQLite before 3.35 (no RETURNING) takes the write lock first, then SELECTs and UPDATEs.

Transactions: given an engine, each call is its own transaction. Given a connection with no transaction
in progress, the call begins and commits one. Given a connection inside a transaction, the call joins it
and the claim only becomes visible when the caller commits (a rollback undoes it). The locking engines
need a real transaction: never pass a connection in AUTOCOMMIT isolation (the claim then fails with
ClaimError rather than risk a row held twice); PostgreSQL's default READ COMMITTED is what it is built for.
On SQLite, pass an engine or a connection whose transaction has not read yet (a transaction that read
first cannot always upgrade to the write lock and fails with "database is locked").

Indexes: a claim reads the claimable rows matching ``where`` in ``order_by`` order, so give the table an
index that serves that, e.g. ``(done_at, created_at, id)`` for ``where=done_at IS NULL``; otherwise every
claim scans past all finished rows.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Date,
    DateTime,
    Enum,
    Integer,
    Numeric,
    Select,
    String,
    Table,
    and_,
    any_,
    bindparam,
    false,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

from storage.dbclock import db_utc_now, db_utc_now_plus
from storage.types import UTCDateTime

__all__ = [
    "MAX_LIMIT",
    "ClaimError",
    "ClaimSpec",
    "claim_batch",
    "claim_columns",
    "db_utc_now",
    "db_utc_now_plus",
    "owned_by",
    "release",
    "renew",
]

logger = logging.getLogger(__name__)

# Claimed ids travel back as bound parameters (IN lists); asyncpg allows 32767 per statement, old SQLite 999.
MAX_LIMIT = 10_000


class ClaimError(RuntimeError):
    """The claim could not be made safely (e.g. the connection is not in a real transaction)."""


def claim_columns() -> list[Column[Any]]:
    """The two columns a work-item table needs for :class:`ClaimSpec` (``claimed_by``, ``claimed_until``)."""
    return [
        Column("claimed_by", String(255), nullable=True),  # the owner token of the run holding the item
        Column("claimed_until", UTCDateTime(), nullable=True),  # database clock; past = claimable again
    ]


# --------------------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True, eq=False)
class ClaimSpec:
    """Which table holds the work items, and which of its columns carry the claim.

    ``owner_column`` is a string column, NULL when unclaimed; ``until_column`` a
    :class:`~storage.types.UTCDateTime` column, NULL when unclaimed, the end of the lease otherwise.
    ``order_by`` decides which claimable items go first (e.g. ``(t.c.created_at, t.c.id)``); empty means
    any order. Index the columns your ``where`` and ``order_by`` use.
    """

    table: Table
    id_column: Column[Any]
    owner_column: Column[Any]
    until_column: Column[Any]
    order_by: Sequence[ColumnElement[Any]] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "order_by", tuple(self.order_by))
        for name in ("id_column", "owner_column", "until_column"):
            column = getattr(self, name)
            if column.table is not self.table:
                raise ValueError(f"ClaimSpec.{name} {column} is not a column of table {self.table.name!r}")
        if not self.id_column.primary_key:
            raise ValueError(f"ClaimSpec.id_column {self.id_column} must be the table's primary key")
        if not isinstance(self.until_column.type, UTCDateTime):
            raise TypeError(
                f"ClaimSpec.until_column {self.until_column} must be a storage.types.UTCDateTime column "
                f"(it is compared with the database clock), not {self.until_column.type!r}"
            )

    def claimable(self) -> ColumnElement[bool]:
        """Unclaimed, or the lease has expired (by the database clock)."""
        return or_(self.owner_column.is_(None), self.until_column < db_utc_now())

    def owned(self, owner: str, ids: Iterable[Any] | None = None, *, live: bool = True) -> ColumnElement[bool]:
        """Condition for fencing writes: the rows (``ids``, or all) are held by ``owner``.

        With ``live`` (the default) the lease must also still be running by the database clock, so a
        replica that overran its lease cannot write even before another replica takes the item over.
        ``live=False`` only checks the owner, which is enough to keep out a replica whose item was
        re-claimed (a claim overwrites the owner).
        """
        conditions: list[ColumnElement[bool]] = [self.owner_column == owner]
        if live:
            conditions.append(self.until_column > db_utc_now())
        if ids is not None:
            id_list = list(ids)
            conditions.append(self.id_column.in_(id_list) if id_list else false())
        return and_(*conditions)


def owned_by(
    spec: ClaimSpec, owner: str, ids: Iterable[Any] | None = None, *, live: bool = True
) -> ColumnElement[bool]:
    """Same as ``spec.owned(owner, ids, live=live)``: ``update(t).where(owned_by(spec, owner, ids))``."""
    return spec.owned(owner, ids, live=live)


# --------------------------------------------------------------------------------------------------------
# Claim, release, renew


async def claim_batch(
    conn_or_engine: AsyncConnection | AsyncEngine,
    spec: ClaimSpec,
    *,
    owner: str,
    limit: int,
    lease_seconds: float,
    where: ColumnElement[bool] | None = None,
) -> list[Any]:
    """Claim up to ``limit`` claimable items matching ``where`` for ``owner``; return their ids.

    The ids come back in ``spec.order_by`` order. The lease ends ``lease_seconds`` after the claim, by the
    database clock; until then no other owner can claim these items. An empty list means nothing was
    claimable (items locked by another replica's claim in flight are skipped, not waited for).
    """
    _check_owner(owner)
    if limit > MAX_LIMIT:
        raise ValueError(f"limit {limit} is above MAX_LIMIT ({MAX_LIMIT}); claim in smaller batches")
    if not lease_seconds > 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
    if limit <= 0:
        return []
    async with _transaction(conn_or_engine) as conn:
        name = conn.dialect.name
        if name == "sqlite":
            if conn.dialect.update_returning:
                return await _claim_sqlite(conn, spec, owner, limit, lease_seconds, where)
            return await _claim_sqlite_no_returning(conn, spec, owner, limit, lease_seconds, where)
        if name in ("postgresql", "mysql", "mariadb"):
            return await _claim_locking(conn, spec, owner, limit, lease_seconds, where)
        raise NotImplementedError(f"claim_batch does not support the {name} dialect")


async def release(
    conn_or_engine: AsyncConnection | AsyncEngine, spec: ClaimSpec, ids: Iterable[Any], *, owner: str
) -> int:
    """Give back items ``owner`` holds (unfinished work), so they are claimable at once; returns how many.

    Items held by another owner (re-claimed after this owner's lease expired) are left alone.
    """
    _check_owner(owner)
    id_list = list(ids)
    if not id_list:
        return 0
    async with _transaction(conn_or_engine) as conn:
        result = await conn.execute(
            update(spec.table)
            .where(spec.owned(owner, id_list, live=False))
            .values({spec.owner_column: None, spec.until_column: None})
        )
        return int(result.rowcount)


async def renew(
    conn_or_engine: AsyncConnection | AsyncEngine,
    spec: ClaimSpec,
    ids: Iterable[Any],
    *,
    owner: str,
    lease_seconds: float,
) -> int:
    """Extend ``owner``'s lease on ``ids`` to ``lease_seconds`` from now (database clock); returns how many.

    An item another owner has re-claimed is not renewed; compare the count with ``len(ids)``.
    """
    _check_owner(owner)
    if not lease_seconds > 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
    id_list = list(ids)
    if not id_list:
        return 0
    async with _transaction(conn_or_engine) as conn:
        result = await conn.execute(
            update(spec.table)
            .where(spec.owned(owner, id_list, live=False))
            .values({spec.until_column: db_utc_now_plus(lease_seconds)})
        )
        return int(result.rowcount)


def _check_owner(owner: str) -> None:
    if not owner:
        raise ValueError("owner must be a non-empty string")


@asynccontextmanager
async def _transaction(conn_or_engine: AsyncConnection | AsyncEngine) -> AsyncIterator[AsyncConnection]:
    if isinstance(conn_or_engine, AsyncEngine):
        async with conn_or_engine.begin() as conn:
            yield conn
    elif conn_or_engine.in_transaction():
        yield conn_or_engine  # the caller's transaction; the caller commits
    else:
        async with conn_or_engine.begin():
            yield conn_or_engine


def _candidates(spec: ClaimSpec, limit: int, where: ColumnElement[bool] | None) -> Select[tuple[Any]]:
    conditions = [spec.claimable()] if where is None else [spec.claimable(), where]
    return select(spec.id_column).where(*conditions).order_by(*spec.order_by).limit(limit)


def _take(spec: ClaimSpec, owner: str, lease_seconds: float) -> dict[Any, Any]:
    return {spec.owner_column: owner, spec.until_column: db_utc_now_plus(lease_seconds)}


async def _claim_locking(
    conn: AsyncConnection,
    spec: ClaimSpec,
    owner: str,
    limit: int,
    lease_seconds: float,
    where: ColumnElement[bool] | None,
) -> list[Any]:
    """PostgreSQL / MariaDB / MySQL: lock the candidates (skipping rows other claimers hold), then take them."""
    skip_locked = _supports_skip_locked(conn.dialect)
    candidates = _candidates(spec, limit, where).with_for_update(skip_locked=skip_locked)
    ids = list((await conn.execute(candidates)).scalars())
    if not ids:
        return []
    # The rows are locked by this transaction, so the claimable re-check always passes here. It only
    # matters when locks did not hold (a connection in AUTOCOMMIT): then the claim fails loudly instead of
    # overwriting another owner's claim.
    result = await conn.execute(
        update(spec.table)
        .where(_id_in(conn.dialect, spec, ids), spec.claimable())
        .values(_take(spec, owner, lease_seconds))
    )
    if result.rowcount != len(ids):
        raise ClaimError(
            f"claimed {result.rowcount} of {len(ids)} locked rows of {spec.table.name}: the row locks did not "
            "hold; run claim_batch in a transaction (not an AUTOCOMMIT connection)"
        )
    return ids


def _id_in(dialect: Dialect, spec: ClaimSpec, ids: list[Any]) -> ColumnElement[bool]:
    """``id IN (...)``; on PostgreSQL ``id = ANY(:array)``: one parameter and one cached statement for any
    batch size, instead of a placeholder (and its rendering on every call) per id."""
    if dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY  # imported on use: the dialect package is large

        return spec.id_column == any_(bindparam("claimed_ids", ids, type_=ARRAY(spec.id_column.type)))
    return spec.id_column.in_(ids)


async def _claim_sqlite(
    conn: AsyncConnection,
    spec: ClaimSpec,
    owner: str,
    limit: int,
    lease_seconds: float,
    where: ColumnElement[bool] | None,
) -> list[Any]:
    """SQLite serialises writers: one conditional UPDATE picks and takes the rows; RETURNING names them.

    RETURNING comes back in no particular order. When ``order_by`` is plain columns (ASC/DESC), their
    values come back too and Python sorts the way SQLite would (NULLs lowest); otherwise a second SELECT
    puts the ids in order.
    """
    keys = _python_sort_keys(spec)
    subquery = _candidates(spec, limit, where)
    stmt = (
        update(spec.table)
        .where(spec.id_column.in_(subquery))
        .values(_take(spec, owner, lease_seconds))
        .returning(spec.id_column, *(column for column, _ in keys or ()))
    )
    rows = [tuple(r) for r in await conn.execute(stmt)]
    if len(rows) < 2 or not spec.order_by:
        return [r[0] for r in rows]
    if keys is not None:
        try:
            for position in range(len(keys), 0, -1):  # stable sorts, least significant key first
                rows.sort(key=_nulls_lowest(position), reverse=keys[position - 1][1])
            return [r[0] for r in rows]
        except TypeError:  # values Python cannot compare (mixed storage classes): let SQLite order them
            pass
    ordered = select(spec.id_column).where(spec.id_column.in_([r[0] for r in rows])).order_by(*spec.order_by)
    return list((await conn.execute(ordered)).scalars())


def _python_sort_keys(spec: ClaimSpec) -> list[tuple[Column[Any], bool]] | None:
    """``order_by`` as (column, descending) when Python can sort like SQLite does; None otherwise."""
    keys: list[tuple[Column[Any], bool]] = []
    for element in spec.order_by:
        descending = False
        if isinstance(element, UnaryExpression) and element.modifier in (operators.asc_op, operators.desc_op):
            descending = element.modifier is operators.desc_op
            element = element.element
        if not isinstance(element, Column) or element.table is not spec.table:
            return None
        kind = element.type
        if not isinstance(kind, _PYTHON_SORTABLE) or isinstance(kind, Enum):  # Enum: stored names, Python members
            return None
        if getattr(kind, "collation", None):  # Python compares code points, like SQLite's BINARY only
            return None
        keys.append((element, descending))
    return keys


# Types whose Python values order the way SQLite orders what SQLAlchemy stored for them.
_PYTHON_SORTABLE = (Integer, Numeric, String, DateTime, Date, Boolean, UTCDateTime)


def _nulls_lowest(position: int) -> Callable[[tuple[Any, ...]], tuple[bool, Any]]:
    def key(row: tuple[Any, ...]) -> tuple[bool, Any]:
        return (row[position] is not None, row[position])

    return key


async def _claim_sqlite_no_returning(
    conn: AsyncConnection,
    spec: ClaimSpec,
    owner: str,
    limit: int,
    lease_seconds: float,
    where: ColumnElement[bool] | None,
) -> list[Any]:
    """SQLite before 3.35: take the write lock with a no-op write, then SELECT and UPDATE under it."""
    await conn.execute(update(spec.table).where(false()).values({spec.owner_column: spec.owner_column}))
    ids = list((await conn.execute(_candidates(spec, limit, where))).scalars())
    if ids:
        await conn.execute(
            update(spec.table).where(spec.id_column.in_(ids)).values(_take(spec, owner, lease_seconds))
        )
    return ids


_skip_locked: weakref.WeakKeyDictionary[Dialect, bool] = weakref.WeakKeyDictionary()


def _supports_skip_locked(dialect: Dialect) -> bool:
    """PostgreSQL 9.5+, MariaDB 10.6+, MySQL 8.0.1+; decided at first use per engine, warned once."""
    known = _skip_locked.get(dialect)
    if known is not None:
        return known
    version = tuple(dialect.server_version_info or ())
    if dialect.name == "postgresql":
        supported = version >= (9, 5)
        needed = "PostgreSQL 9.5"
    elif getattr(dialect, "is_mariadb", False):
        supported = version >= (10, 6)
        needed = "MariaDB 10.6"
    else:
        supported = version >= (8, 0, 1)
        needed = "MySQL 8.0.1"
    if not supported:
        logger.warning(
            "%s server %s has no SKIP LOCKED (needs %s): work-item claims use plain FOR UPDATE, so "
            "concurrent claimers wait for each other instead of taking different rows",
            dialect.name,
            ".".join(str(part) for part in version) or "of unknown version",
            needed,
        )
    _skip_locked[dialect] = supported
    return supported
