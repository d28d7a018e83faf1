"""Work-item claims: batches, leases on the database clock, release, fencing, and exactly-once under concurrency."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    event,
    exc,
    func,
    insert,
    literal_column,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.claims import (
    MAX_LIMIT,
    ClaimSpec,
    claim_batch,
    db_utc_now,
    db_utc_now_plus,
    owned_by,
    release,
    renew,
)
from storage.engine import create_engine
from storage.types import UTCDateTime
from tests.support.wait import until

pytestmark = pytest.mark.anyio

md = MetaData()
items = Table(
    "work_items",
    md,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("done", Boolean, nullable=False, default=False),
    Column("priority", Integer, nullable=True),
)
SPEC = ClaimSpec(
    items, items.c.id, items.c.claimed_by, items.c.claimed_until, order_by=(items.c.created_at, items.c.id)
)
BY_ID = ClaimSpec(items, items.c.id, items.c.claimed_by, items.c.claimed_until, order_by=(items.c.id,))
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SQLALCHEMY_SQLITE_TEXT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(md.create_all)
    yield engine
    await engine.dispose()


async def add(engine: AsyncEngine, ids: range, *, kind: str = "a", newest_first: bool = False) -> None:
    """Insert unclaimed items; with newest_first the higher ids are the older items."""
    rows = [
        {"id": i, "kind": kind, "created_at": T0 + timedelta(seconds=-i if newest_first else i), "done": False}
        for i in ids
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(items), rows)


async def row(engine: AsyncEngine, item_id: int) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(items).where(items.c.id == item_id))).one()


async def db_now(engine: AsyncEngine) -> datetime:
    async with engine.connect() as conn:
        value: datetime = (await conn.execute(select(db_utc_now()))).scalar_one()
    return value


async def mark_done(conn: AsyncConnection, owner: str, ids: list[int], *, live: bool = True) -> int:
    result = await conn.execute(update(items).where(SPEC.owned(owner, ids, live=live)).values(done=True))
    return int(result.rowcount)


# ---------------------------------------------------------------------------------------------- basics


async def test_claim_takes_the_oldest_items_up_to_the_limit(engine: AsyncEngine) -> None:
    await add(engine, range(1, 11), newest_first=True)  # id 10 is the oldest
    before = await db_now(engine)
    first = await claim_batch(engine, SPEC, owner="A", limit=4, lease_seconds=60)
    after = await db_now(engine)
    assert first == [10, 9, 8, 7]
    assert await claim_batch(engine, SPEC, owner="B", limit=4, lease_seconds=60) == [6, 5, 4, 3]
    assert await claim_batch(engine, SPEC, owner="C", limit=4, lease_seconds=60) == [2, 1]
    assert await claim_batch(engine, SPEC, owner="D", limit=4, lease_seconds=60) == []

    claimed = await row(engine, 10)
    assert claimed.claimed_by == "A"
    assert claimed.claimed_until.tzinfo == UTC
    # The lease ends lease_seconds after the claim, on the database clock.
    slack = timedelta(milliseconds=2)  # SQLite's clock has millisecond steps
    assert before + timedelta(seconds=60) - slack <= claimed.claimed_until <= after + timedelta(seconds=60) + slack
    assert (await row(engine, 1)).claimed_by == "C"


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(lambda: (items.c.priority.desc(), items.c.id), id="desc-with-nulls"),
        pytest.param(lambda: (items.c.kind, items.c.priority, items.c.id.desc()), id="mixed-directions"),
        pytest.param(lambda: (items.c.created_at.desc(), items.c.id), id="datetimes"),
        pytest.param(lambda: (func.abs(items.c.id - 7), items.c.id), id="expression"),
    ],
)
async def test_ids_come_back_in_the_databases_order(engine: AsyncEngine, order: Callable[[], Any]) -> None:
    """Whatever order_by is, the ids are listed as the database's own ORDER BY lists them (NULLs included)."""
    priorities = [3, None, 1, 3, None, 2, 1, 3, None, 2, 2, 1]
    async with engine.begin() as conn:
        await conn.execute(
            insert(items),
            [
                {"id": i, "kind": "ab"[i % 2], "created_at": T0 + timedelta(seconds=(i * 7) % 5), "done": False,
                 "priority": p}
                for i, p in enumerate(priorities, start=1)
            ],
        )
    spec = ClaimSpec(items, items.c.id, items.c.claimed_by, items.c.claimed_until, order_by=order())
    async with engine.connect() as conn:
        expected = list((await conn.execute(select(items.c.id).order_by(*spec.order_by))).scalars())
    seen, stop = _statements(engine)
    try:
        first = await claim_batch(engine, spec, owner="A", limit=5, lease_seconds=60)
        rest = await claim_batch(engine, spec, owner="B", limit=50, lease_seconds=60)
    finally:
        stop()
    assert first + rest == expected
    if engine.dialect.name == "sqlite":  # plain columns are sorted in Python, expressions by a second SELECT
        selects = [sql for sql in seen if sql.lstrip().startswith("SELECT")]
        assert len(selects) == (2 if "abs" in str(spec.order_by[0]) else 0)


async def test_where_filters_the_claimable_items(engine: AsyncEngine) -> None:
    await add(engine, range(1, 6), kind="a")
    await add(engine, range(6, 11), kind="b")
    only_b = items.c.kind == "b"
    assert await claim_batch(engine, BY_ID, owner="A", limit=3, lease_seconds=60, where=only_b) == [6, 7, 8]
    assert await claim_batch(engine, BY_ID, owner="A", limit=3, lease_seconds=60, where=only_b) == [9, 10]
    assert await claim_batch(engine, BY_ID, owner="A", limit=3, lease_seconds=60, where=only_b) == []
    # The OR of the claimable condition must not swallow the filter: claimed 'b' items stay out.
    assert await claim_batch(engine, BY_ID, owner="B", limit=10, lease_seconds=60) == [1, 2, 3, 4, 5]


async def test_claimed_items_wait_for_the_lease_to_expire(engine: AsyncEngine) -> None:
    await add(engine, range(1, 4))
    assert await claim_batch(engine, BY_ID, owner="A", limit=10, lease_seconds=1.0) == [1, 2, 3]
    a_until = (await row(engine, 1)).claimed_until
    assert await claim_batch(engine, BY_ID, owner="B", limit=10, lease_seconds=30) == []

    taken = await until(
        lambda: claim_batch(engine, BY_ID, owner="B", limit=10, lease_seconds=30),
        interval=0.02,
        what="A's lease to end",
    )
    assert taken == [1, 2, 3]
    reclaimed = await row(engine, 1)
    assert reclaimed.claimed_by == "B"
    # B's claim happened, by the database clock, no earlier than A's lease end.
    assert reclaimed.claimed_until - timedelta(seconds=30) >= a_until
    assert await claim_batch(engine, BY_ID, owner="A", limit=10, lease_seconds=30) == []


async def test_release_gives_items_back(engine: AsyncEngine) -> None:
    await add(engine, range(1, 6))
    assert await claim_batch(engine, BY_ID, owner="A", limit=5, lease_seconds=60) == [1, 2, 3, 4, 5]
    assert await release(engine, BY_ID, [2, 4], owner="B") == 0  # not B's
    assert await release(engine, BY_ID, [], owner="A") == 0
    assert await release(engine, BY_ID, [2, 4], owner="A") == 2
    released = await row(engine, 2)
    assert (released.claimed_by, released.claimed_until) == (None, None)
    assert await claim_batch(engine, BY_ID, owner="B", limit=5, lease_seconds=60) == [2, 4]
    assert await release(engine, BY_ID, [2, 4], owner="A") == 0  # B holds them now


async def test_owned_fences_writes(engine: AsyncEngine) -> None:
    await add(engine, range(1, 4))
    ids = await claim_batch(engine, BY_ID, owner="A", limit=3, lease_seconds=1.0)
    async with engine.begin() as conn:
        assert await mark_done(conn, "B", ids) == 0
        assert (await conn.execute(update(items).where(owned_by(SPEC, "B", ids)).values(done=True))).rowcount == 0
        assert await mark_done(conn, "A", ids[:1]) == 1
        assert await mark_done(conn, "A", []) == 0

    # Once A's lease has run out (database clock), a live fence rejects A's write even before anyone
    # else claims the items; the owner-only fence still accepts it until another owner takes them.
    async def a_lease_over() -> bool:
        async with engine.connect() as conn:
            held = (await conn.execute(select(func.count()).where(SPEC.owned("A", ids)))).scalar_one()
        return held == 0

    await until(a_lease_over, interval=0.02, what="A's lease to end")
    async with engine.begin() as conn:
        assert await mark_done(conn, "A", ids[1:2]) == 0
        assert await mark_done(conn, "A", ids[1:2], live=False) == 1
    assert await claim_batch(engine, BY_ID, owner="B", limit=3, lease_seconds=60) == [1, 2, 3]
    async with engine.begin() as conn:
        assert await mark_done(conn, "A", ids[2:], live=False) == 0
        assert await mark_done(conn, "B", ids[2:]) == 1


async def test_renew_extends_only_the_owners_lease(engine: AsyncEngine) -> None:
    await add(engine, range(1, 3))
    ids = await claim_batch(engine, BY_ID, owner="A", limit=2, lease_seconds=1.0)
    assert await renew(engine, BY_ID, ids, owner="B", lease_seconds=600) == 0
    before = await db_now(engine)
    assert await renew(engine, BY_ID, ids, owner="A", lease_seconds=600) == 2
    assert (await row(engine, 1)).claimed_until >= before + timedelta(seconds=599)
    assert await claim_batch(engine, BY_ID, owner="B", limit=2, lease_seconds=60) == []


async def test_claim_joins_the_callers_transaction(engine: AsyncEngine) -> None:
    await add(engine, range(1, 4))
    async with engine.connect() as conn:
        tx = await conn.begin()
        assert await claim_batch(conn, BY_ID, owner="A", limit=2, lease_seconds=60) == [1, 2]
        await tx.rollback()  # the claim was part of the caller's transaction
        assert not conn.in_transaction()
        # Not in a transaction: the call makes and commits its own.
        assert await claim_batch(conn, BY_ID, owner="A", limit=2, lease_seconds=60) == [1, 2]
        assert not conn.in_transaction()
    assert (await row(engine, 1)).claimed_by == "A"
    assert await claim_batch(engine, BY_ID, owner="B", limit=5, lease_seconds=60) == [3]


async def test_arguments_are_checked(engine: AsyncEngine) -> None:
    await add(engine, range(1, 3))
    assert await claim_batch(engine, BY_ID, owner="A", limit=0, lease_seconds=60) == []
    with pytest.raises(ValueError, match="lease_seconds"):
        await claim_batch(engine, BY_ID, owner="A", limit=1, lease_seconds=0)
    with pytest.raises(ValueError, match="owner"):
        await claim_batch(engine, BY_ID, owner="", limit=1, lease_seconds=1)
    with pytest.raises(ValueError, match="MAX_LIMIT"):
        await claim_batch(engine, BY_ID, owner="A", limit=MAX_LIMIT + 1, lease_seconds=1)
    other = Table("other", MetaData(), Column("id", Integer, primary_key=True), Column("until", UTCDateTime()))
    with pytest.raises(ValueError, match="not a column"):
        ClaimSpec(items, items.c.id, items.c.claimed_by, other.c.until)
    with pytest.raises(ValueError, match="primary key"):
        ClaimSpec(items, items.c.kind, items.c.claimed_by, items.c.claimed_until)
    naive = Table("naive", MetaData(), Column("id", Integer, primary_key=True), Column("owner", String(10)),
                  Column("until", DateTime()))
    with pytest.raises(TypeError, match="UTCDateTime"):
        ClaimSpec(naive, naive.c.id, naive.c.owner, naive.c.until)


# ----------------------------------------------------------------------------------------- concurrency


async def test_rows_of_a_claim_in_flight_are_skipped_not_waited_for(engine: AsyncEngine, db_url: str) -> None:
    await add(engine, range(1, 5))
    if engine.dialect.name == "sqlite":  # one writer at a time: a second claimer waits (busy_timeout) instead
        impatient = create_engine(db_url, busy_timeout_ms=0)
        try:
            async with engine.connect() as conn:
                tx = await conn.begin()
                assert await claim_batch(conn, BY_ID, owner="A", limit=2, lease_seconds=60) == [1, 2]
                with pytest.raises(exc.OperationalError, match="database is locked"):
                    await claim_batch(impatient, BY_ID, owner="B", limit=5, lease_seconds=60)
                await tx.commit()
            assert await claim_batch(impatient, BY_ID, owner="B", limit=5, lease_seconds=60) == [3, 4]
        finally:
            await impatient.dispose()
        return
    async with engine.connect() as conn:
        tx = await conn.begin()
        assert await claim_batch(conn, BY_ID, owner="A", limit=2, lease_seconds=60) == [1, 2]
        with anyio.fail_after(5):  # SKIP LOCKED: B neither waits for A nor sees A's rows
            assert await claim_batch(engine, BY_ID, owner="B", limit=5, lease_seconds=60) == [3, 4]
        await tx.rollback()
    assert await claim_batch(engine, BY_ID, owner="C", limit=5, lease_seconds=60) == [1, 2]



async def test_concurrent_claimers_take_every_item_exactly_once(db_url: str) -> None:
    """Four replicas (separate engines, so separate connections) drain 2,000 items in batches of 50."""
    setup = create_engine(db_url)
    async with setup.begin() as conn:
        await conn.run_sync(md.create_all)
    await add(setup, range(1, 2001))
    engines = [create_engine(db_url) for _ in range(4)]
    claimed: dict[str, list[int]] = {}
    batches: Counter[str] = Counter()

    async def replica(name: str, engine: AsyncEngine) -> None:
        mine = claimed.setdefault(name, [])
        while ids := await claim_batch(engine, BY_ID, owner=name, limit=50, lease_seconds=120):
            assert len(ids) <= 50
            batches[name] += 1
            mine.extend(ids)
            async with engine.begin() as conn:  # the work, fenced
                assert await mark_done(conn, name, ids) == len(ids)
            await anyio.lowlevel.checkpoint()

    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i, engine in enumerate(engines):
                    tg.start_soon(replica, f"replica-{i}", engine)
        every = [item for ids in claimed.values() for item in ids]
        counts = Counter(every)
        assert [item for item, n in counts.items() if n > 1] == []  # none twice
        assert len(every) == len(counts) == 2000  # none missed
        assert set(counts) == set(range(1, 2001))
        async with setup.connect() as conn:
            rows = (await conn.execute(select(items.c.id, items.c.claimed_by, items.c.done))).all()
        assert all(r.done for r in rows)
        owner_of = {item: name for name, ids in claimed.items() for item in ids}
        assert {r.id: r.claimed_by for r in rows} == owner_of
        assert sum(1 for n in batches.values() if n) >= 2, batches  # the replicas really took turns
    finally:
        for engine in engines:
            await engine.dispose()
        await setup.dispose()


# ------------------------------------------------------------------------------------- database clock


def _server_epoch(dialect: str) -> str:
    return {
        "postgresql": "extract(epoch from clock_timestamp())",
        "mysql": "UNIX_TIMESTAMP(NOW(6))",
        "sqlite": "(julianday('now') - 2440587.5) * 86400.0",
    }[dialect]


async def test_db_utc_now_is_the_servers_clock_in_aware_utc(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        name = engine.dialect.name
        # A non-UTC session time zone must not change the answer.
        if name == "postgresql":
            await conn.execute(text("SET TIME ZONE 'America/New_York'"))
        elif name == "mysql":
            await conn.execute(text("SET time_zone = '-05:00'"))
        row_: Any = (
            await conn.execute(
                select(
                    db_utc_now(),
                    literal_column(_server_epoch(name)),
                    db_utc_now_plus(90),
                    db_utc_now_plus(1.5),
                    db_utc_now_plus(-2.25),
                )
            )
        ).one()
        now, epoch, plus_90, plus_frac, minus = row_
        assert isinstance(now, datetime)
        assert now.tzinfo == UTC
        assert abs(now.timestamp() - float(epoch)) < 1.0
        # Within one statement "now" is one instant, so the offsets are exact.
        assert plus_90 - now == timedelta(seconds=90)
        assert plus_frac - now == timedelta(seconds=1.5)
        assert minus - now == timedelta(seconds=-2.25)

        # Written into a UTCDateTime column by the database, read back aware and equal.
        await conn.execute(insert(items).values(id=1, kind="a", created_at=db_utc_now(), done=False))
        stored, same = (
            await conn.execute(select(items.c.created_at, items.c.created_at <= db_utc_now()).where(items.c.id == 1))
        ).one()
        await conn.commit()
    assert stored.tzinfo == UTC
    assert abs(stored.timestamp() - now.timestamp()) < 5
    assert same


async def test_lease_ordering_across_a_second_boundary_on_the_real_clock(engine: AsyncEngine) -> None:
    """Leases written by SQLAlchemy expire, by the database clock, exactly in time order across a second."""
    now = await db_now(engine)
    boundary = now.replace(microsecond=0) + timedelta(seconds=2)
    offsets_us = [-2000, -1000, -1, 0, 1, 1000, 300_000]
    async with engine.begin() as conn:
        await conn.execute(
            insert(items),
            [
                {"id": i, "kind": "a", "created_at": T0, "claimed_by": "old", "done": False,
                 "claimed_until": boundary + timedelta(microseconds=us)}
                for i, us in enumerate(offsets_us)
            ],
        )
    seen: set[int] = set()
    query = select(items.c.id, items.c.claimed_until, items.c.claimed_until < db_utc_now(), db_utc_now())

    async def all_expired() -> bool:
        async with engine.connect() as conn:
            rows = (await conn.execute(query.order_by(items.c.id))).all()
        for item_id, lease_end, expired, db_time in rows:
            assert bool(expired) == (lease_end < db_time), (item_id, lease_end, db_time)
        flags = [bool(r[2]) for r in rows]
        assert flags == sorted(flags, reverse=True), flags  # the expired ones are always the earliest
        seen.add(sum(flags))
        return all(flags)

    await until(all_expired, interval=0.001, what="every lease to pass")
    assert 0 in seen
    claimed = await claim_batch(engine, BY_ID, owner="new", limit=10, lease_seconds=60)
    assert claimed == list(range(len(offsets_us)))


def _sqlite_now_at(instant: str, expression: Any) -> str:
    """The SQL SQLAlchemy renders for ``expression`` on SQLite, with the clock pinned to ``instant``."""
    sql = str(expression.compile(dialect=sqlite_dialect.dialect(), compile_kwargs={"literal_binds": True}))
    assert "'now'" in sql
    return sql.replace("'now'", f"'{instant}'")


async def test_sqlite_clock_text_sorts_like_sqlalchemy_datetimes(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(md.create_all)
            raw_now = (await conn.execute(select(type_coerce(db_utc_now(), String())))).scalar_one()
            assert SQLALCHEMY_SQLITE_TEXT.match(raw_now), raw_now
            # SQLAlchemy writes microseconds always, even zero ones: the same fixed-width text.
            values = {
                1: datetime(2024, 1, 1, 11, 59, 59, 999_999, tzinfo=UTC),
                2: datetime(2024, 1, 1, 12, 0, 0, 998_999, tzinfo=UTC),
                3: datetime(2024, 1, 1, 12, 0, 0, 999_000, tzinfo=UTC),
                4: datetime(2024, 1, 1, 12, 0, 0, 999_999, tzinfo=UTC),
                5: datetime(2024, 1, 1, 12, 0, 1, tzinfo=UTC),
                6: datetime(2024, 1, 1, 12, 0, 1, 1, tzinfo=UTC),
                7: datetime(2024, 1, 1, 12, 0, 1, 1000, tzinfo=UTC),
                8: datetime(2024, 1, 1, 12, 0, 2, tzinfo=UTC),
            }
            await conn.execute(
                insert(items),
                [
                    {"id": i, "kind": "a", "created_at": T0, "claimed_until": v, "done": False}
                    for i, v in values.items()
                ],
            )
            raw = (await conn.execute(text("SELECT claimed_until FROM work_items ORDER BY id"))).scalars().all()
            assert all(SQLALCHEMY_SQLITE_TEXT.match(v) for v in raw), raw
            assert raw[4] == "2024-01-01 12:00:01.000000"

            for instant in ("2024-01-01 12:00:00.999", "2024-01-01 12:00:01.000", "2024-01-01 12:00:01.001"):
                pinned = datetime.fromisoformat(instant + "000").replace(tzinfo=UTC)
                now_sql = _sqlite_now_at(instant, db_utc_now())
                assert (await conn.execute(text(f"SELECT {now_sql}"))).scalar_one() == instant + "000"
                expired = (
                    await conn.execute(text(f"SELECT id FROM work_items WHERE claimed_until < {now_sql} ORDER BY id"))
                ).scalars().all()
                assert expired == [i for i, v in values.items() if v < pinned], instant

            # now + lease carries across the second (and the day) the same way.
            plus_sql = _sqlite_now_at("2024-01-01 23:59:59.999", db_utc_now_plus(0.002))
            assert (await conn.execute(text(f"SELECT {plus_sql}"))).scalar_one() == "2024-01-02 00:00:00.001000"
    finally:
        await engine.dispose()


# -------------------------------------------------------------------------------------- engine fallbacks


def _statements(engine: AsyncEngine) -> tuple[list[str], Callable[[], None]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    return seen, lambda: event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_skip_locked_is_used_where_the_server_has_it(engine: AsyncEngine) -> None:
    await add(engine, range(1, 3))
    seen, stop = _statements(engine)
    try:
        await claim_batch(engine, BY_ID, owner="A", limit=2, lease_seconds=60)
    finally:
        stop()
    sql = " ".join(seen)
    if engine.dialect.name == "sqlite":
        assert "RETURNING" in sql and "FOR UPDATE" not in sql
    else:
        assert "FOR UPDATE SKIP LOCKED" in sql


async def test_old_mariadb_falls_back_to_plain_for_update(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(mysql_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(md.create_all)
        await add(engine, range(1, 5))
        monkeypatch.setattr(engine.dialect, "server_version_info", (10, 5, 27))  # as read at first connect
        seen, stop = _statements(engine)
        with caplog.at_level(logging.WARNING, logger="storage.claims"):
            async with engine.connect() as conn:
                tx = await conn.begin()
                assert await claim_batch(conn, BY_ID, owner="A", limit=2, lease_seconds=60) == [1, 2]
                async with anyio.create_task_group() as tg:
                    b_claimed: list[int] = []

                    async def b_claims() -> None:
                        b_claimed.extend(await claim_batch(engine, BY_ID, owner="B", limit=5, lease_seconds=60))

                    tg.start_soon(b_claims)
                    # Without SKIP LOCKED, B queues behind A's row locks...
                    # InnoDB refreshes INNODB_TRX only when it was not read for 0.1 s: poll slower than that.
                    await until(lambda: _lock_waits(conn), interval=0.25, what="B to wait for A's row locks")
                    await tx.commit()  # ...and once A commits, B skips A's now-claimed rows.
            assert b_claimed == [3, 4]
        stop()
        warnings = [r for r in caplog.records if r.name == "storage.claims"]
        assert len(warnings) == 1  # once per engine
        assert "SKIP LOCKED" in warnings[0].getMessage() and "10.5.27" in warnings[0].getMessage()
        claims = [s for s in seen if "FROM work_items" in s and s.lstrip().startswith("SELECT")]
        assert len(claims) == 2
        assert all("FOR UPDATE" in s and "SKIP LOCKED" not in s for s in claims)
    finally:
        await engine.dispose()


async def _lock_waits(conn: AsyncConnection) -> int:
    query = text("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'")
    return int((await conn.execute(query)).scalar_one())


async def test_sqlite_without_returning_takes_the_write_lock_first(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, other = create_engine(sqlite_url), create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(md.create_all)
        await add(engine, range(1, 8), newest_first=True)
        monkeypatch.setattr(engine.dialect, "update_returning", False)  # as SQLite < 3.35 reports
        seen, stop = _statements(engine)
        assert await claim_batch(engine, SPEC, owner="A", limit=3, lease_seconds=60) == [7, 6, 5]
        stop()
        assert not any("RETURNING" in s for s in seen)
        assert await claim_batch(other, SPEC, owner="B", limit=3, lease_seconds=60) == [4, 3, 2]
        assert await claim_batch(engine, SPEC, owner="A", limit=3, lease_seconds=60) == [1]
        assert (await row(engine, 7)).claimed_by == "A"
    finally:
        await engine.dispose()
        await other.dispose()
