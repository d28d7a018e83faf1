"""Coordination contract on every engine: claims, leases, fencing, takeover, fleet-wide state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.base import BaseSchedulerService, LeaseBusy, RunContext
from services.config import ServiceConfig
from services.coordination import Busy, Coordinator, DatabaseAlignedClock, Lease
from services.runs import RunStatus, RunStore, Trigger
from services.status import ServiceStatus
from storage.engine import create_engine
from storage.migrate import upgrade
from storage.schema import leases, nodes
from tests.support.wait import until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade(db_url)
    engine = create_engine(db_url)
    yield engine
    await engine.dispose()


def coordinator(engine: AsyncEngine, node: str, ttl: float = 30.0, **kwargs: Any) -> Coordinator:
    return Coordinator(engine, node, lock_ttl=ttl, heartbeat_interval=ttl / 3, **kwargs)


class Blocking(BaseSchedulerService):
    type_name = "blocking"
    display_name = "Blocking"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = anyio.Event()
        self.attempts: list[int] = []

    async def run_once(self, ctx: RunContext) -> None:
        self.attempts.append(ctx.attempt)
        await self.release.wait()


def service(engine: AsyncEngine, node: str, coord: Coordinator, **config: Any) -> Blocking:
    settings = ServiceConfig.model_validate({"interval": "@every 1h", "max_retries": 1, **config})
    return Blocking("job", settings, store=RunStore(engine, node), coordinator=coord, clock=coord.clock,
                    shutdown_grace=0.5)


async def test_claim_has_exactly_one_winner(engine: AsyncEngine) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    stores = [RunStore(engine, f"node-{i}") for i in range(5)]
    results: list[str | None] = []

    async def claim(store: RunStore) -> None:
        results.append(await store.claim("job", when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when))

    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(claim, store)
    assert len([r for r in results if r]) == 1


async def test_lease_excludes_and_token_grows(engine: AsyncEngine) -> None:
    a, b = coordinator(engine, "a"), coordinator(engine, "b")
    first = await a.acquire("job", "run-1")
    assert isinstance(first, Lease) and first.token == 1
    busy = await b.acquire("job", "run-2")
    assert busy == Busy("a", "run-1")
    await a.release(first)
    second = await b.acquire("job", "run-2")
    assert isinstance(second, Lease) and second.token == 2
    third = await a.acquire("other", None)  # leases are per service
    assert isinstance(third, Lease) and third.token == 1


async def test_expired_lease_is_taken_over_and_the_old_holder_is_fenced(engine: AsyncEngine) -> None:
    a, b = coordinator(engine, "a", ttl=1.5), coordinator(engine, "b", ttl=1.5)
    store = RunStore(engine, "a")
    when = datetime.now(UTC)
    run_id = await store.claim("job", when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)
    assert run_id is not None
    lease = await a.acquire("job", run_id)
    assert isinstance(lease, Lease)

    async def b_takes_over() -> Lease | None:
        got = await b.acquire("job", None)
        return got if isinstance(got, Lease) else None

    taken: Lease = await until(b_takes_over, timeout=10, interval=0.05, what="the lease to expire (database clock)")
    assert taken.token == lease.token + 1
    # The old holder's outcome write carries the old token and is rejected.
    fenced = await store.finish(run_id, RunStatus.SUCCEEDED, finished_at=datetime.now(UTC), duration=1.0,
                                fence=("job", lease.token))
    assert fenced is False
    # Its next heartbeat finds the lease gone and marks it lost.
    await a.beat()
    assert lease.lost.is_set() and "another node took over" in (lease.lost_reason or "")
    assert "job" not in a.held


async def test_unrenewed_lease_is_lost_locally_when_the_database_is_gone(engine: AsyncEngine) -> None:
    a = coordinator(engine, "a", ttl=1.5)
    lease = await a.acquire("job", None)
    assert isinstance(lease, Lease)
    with anyio.fail_after(5):
        reason = await lease.wait_lost()  # no heartbeat renews it: the local deadline passes
    assert "could not be renewed" in reason


async def test_renewal_keeps_the_lease(engine: AsyncEngine) -> None:
    a, b = coordinator(engine, "a", ttl=1.5), coordinator(engine, "b", ttl=1.5)
    lease = await a.acquire("job", None)
    assert isinstance(lease, Lease)
    for _ in range(6):  # 3 s of renewals every 0.5 s: twice the TTL
        await anyio.sleep(0.5)
        await a.beat()
        assert isinstance(await b.acquire("job", None), Busy)
    assert not lease.lost.is_set()


async def _unreachable(*args: Any, **kwargs: Any) -> Any:
    raise ConnectionError("this node lost the database")


async def test_dead_nodes_run_is_abandoned_and_retried_by_a_survivor(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = coordinator(engine, "dead", ttl=1.5)
    victim = service(engine, "dead", dead)
    alive = coordinator(engine, "alive", ttl=1.5)
    survivor = service(engine, "alive", alive)
    store = RunStore(engine, "alive")
    async with anyio.create_task_group() as tg:
        await tg.start(victim.serve)
        await tg.start(survivor.serve)
        run_id = await victim.trigger()
        await until(lambda: victim.attempts == [1], what="the victim's run to start")
        # The victim's node "dies": no heartbeat renews its lease, and nothing it writes reaches the database.
        for name in ("finish", "resolve", "claim", "save_state"):
            monkeypatch.setattr(victim.store, name, _unreachable)
        monkeypatch.setattr(dead, "release", _unreachable)

        async def taken_over() -> bool:
            await alive.beat()
            return survivor.attempts == [2]

        await until(taken_over, timeout=10, interval=0.1, what="the survivor to retry the run")
        old = await store.get_run(run_id)
        assert old is not None and old.status == "abandoned" and "dead" in (old.error or "")
        records, _ = await store.list_runs("job", limit=10, offset=0)
        retry = next(r for r in records if r.attempt == 2)
        assert (retry.status, retry.node, retry.trigger, retry.scheduled_for) == (
            "running", "alive", "retry", old.scheduled_for)
        survivor.release.set()
        await until(lambda: survivor.metrics.successful_runs == 1, what="the retry to succeed")
        await until(lambda: victim._current is None, what="the victim to give up its run (lease lost)")
        assert (await store.get_run(run_id)).status == "abandoned"  # type: ignore[union-attr]
        tg.cancel_scope.cancel()


async def test_busy_lease_skips_the_fire_across_nodes(engine: AsyncEngine) -> None:
    a, b = coordinator(engine, "a"), coordinator(engine, "b")
    first, second = service(engine, "a", a), service(engine, "b", b)
    async with anyio.create_task_group() as tg:
        await tg.start(first.serve)
        await tg.start(second.serve)
        running = await first.trigger()
        with pytest.raises(LeaseBusy, match=running):
            await second.trigger()
        records, _ = await RunStore(engine, "b").list_runs("job", limit=10, offset=0)
        skipped = [r for r in records if r.status == "skipped"]
        assert len(skipped) == 1 and running in (skipped[0].error or "")
        first.release.set()
        tg.cancel_scope.cancel()


async def test_pause_on_one_node_reaches_the_others(engine: AsyncEngine) -> None:
    a, b = coordinator(engine, "a"), coordinator(engine, "b")
    first, second = service(engine, "a", a), service(engine, "b", b)
    async with anyio.create_task_group() as tg:
        await tg.start(first.serve)
        await tg.start(second.serve)
        await first.pause()
        await b.beat()
        assert second.status is ServiceStatus.PAUSED
        await first.update_config({"interval": "@every 10m"})
        await b.beat()
        assert second.config.interval == "@every 10m"
        assert second.next_runs(1) == first.next_runs(1)  # same anchor, same rhythm
        await first.resume()
        await b.beat()
        assert second.status is ServiceStatus.RUNNING
        tg.cancel_scope.cancel()


async def test_nodes_register_heartbeat_and_align_their_clock(engine: AsyncEngine) -> None:
    skewed = DatabaseAlignedClock(offset=timedelta(seconds=30))
    node = coordinator(engine, "skewed", clock=skewed)
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        assert abs((skewed.now() - datetime.now(UTC)).total_seconds()) < 0.5  # corrected to the database
        async with engine.connect() as conn:
            row = (await conn.execute(select(nodes).where(nodes.c.node_id == "skewed"))).mappings().one()
        assert row["stopped_at"] is None and row["pid"] > 0
        tg.cancel_scope.cancel()
    async with engine.connect() as conn:
        stopped = (await conn.execute(select(nodes.c.stopped_at).where(nodes.c.node_id == "skewed"))).scalar()
    assert stopped is not None


async def test_heartbeat_must_be_well_below_the_ttl(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="at most a third"):
        Coordinator(engine, "n", lock_ttl=10, heartbeat_interval=5)


async def test_fires_due_together_are_claimed_in_one_statement(engine: AsyncEngine) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    mine, theirs = RunStore(engine, "a"), RunStore(engine, "b")
    assert await theirs.claim("svc-7", when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)
    results: dict[str, str | None] = {}

    async def claim(name: str) -> None:
        results[name] = await mine.claim(name, when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(claim, f"svc-{i}")
    assert mine.claim_statements == 1
    assert [name for name, run_id in results.items() if run_id is None] == ["svc-7"]  # the other node had it
    records = {name: await mine.list_runs(name, limit=5, offset=0) for name in ("svc-0", "svc-99")}
    assert all(total == 1 and recs[0].node == "a" for recs, total in records.values())


async def test_leases_acquired_together_share_a_few_statements(engine: AsyncEngine) -> None:
    from sqlalchemy import event

    a, b = coordinator(engine, "a"), coordinator(engine, "b")
    held_elsewhere = await b.acquire("svc-3", "theirs")
    assert isinstance(held_elsewhere, Lease)
    for i in range(50):  # half the rows exist already (free), half are new
        if i % 2 and i != 3:
            warm = await a.acquire(f"svc-{i}", f"warm-{i}")
            assert isinstance(warm, Lease)
            await a.release(warm)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    results: dict[str, Lease | Busy] = {}

    async def take(i: int) -> None:
        results[f"svc-{i}"] = await a.acquire(f"svc-{i}", f"run-{i}")

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(take, i)
    busy = [name for name, got in results.items() if isinstance(got, Busy)]
    assert busy == ["svc-3"] and results["svc-3"] == Busy("b", "theirs")
    tokens = {name: got.token for name, got in results.items() if isinstance(got, Lease)}
    assert all(tokens[f"svc-{i}"] == (2 if i % 2 else 1) for i in range(50) if i != 3)
    # lock in order, take, read the rest, insert the missing, time them, read them back: not 2 x 50
    assert len([s for s in statements if not s.startswith("BEGIN")]) <= 6, statements


async def test_heartbeat_abandons_running_rows_no_lease_covers(engine: AsyncEngine) -> None:
    node = coordinator(engine, "a", ttl=3)
    node.on_expired("job", lambda expired: None)
    store = RunStore(engine, "a")
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    orphan = await store.claim("job", long_ago, attempt=1, trigger=Trigger.SCHEDULE, started_at=long_ago)
    recent = await store.claim("job", datetime.now(UTC), attempt=1, trigger=Trigger.SCHEDULE,
                               started_at=datetime.now(UTC))
    covered = await store.claim("job", long_ago + timedelta(seconds=1), attempt=1, trigger=Trigger.SCHEDULE,
                                started_at=long_ago)
    assert orphan and recent and covered
    assert isinstance(await node.acquire("job", covered), Lease)
    await node.beat()
    statuses = {r.id: r.status for r in (await store.list_runs("job", limit=10, offset=0))[0]}
    assert statuses == {orphan: "abandoned", recent: "running", covered: "running"}


def _counting(engine: AsyncEngine) -> dict[str, int]:
    """Count statements (not SQLite's explicit BEGIN) and commits on the engine from now on."""
    counts = {"statements": 0, "transactions": 0}

    def statement(conn: Any, cursor: Any, text: str, *_: Any) -> None:
        counts["statements"] += not text.startswith("BEGIN")

    def commit(conn: Any) -> None:
        counts["transactions"] += 1

    event.listen(engine.sync_engine, "before_cursor_execute", statement)
    event.listen(engine.sync_engine, "commit", commit)
    return counts


async def test_fires_due_together_claim_and_lease_in_one_transaction(engine: AsyncEngine) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    a, b = coordinator(engine, "a"), coordinator(engine, "b")
    mine, theirs = RunStore(engine, "a"), RunStore(engine, "b")
    names = [f"svc-{i:02d}" for i in range(40)]
    await a.prepare(names)
    assert await theirs.claim("svc-07", when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)  # b has it
    held = await b.acquire("svc-03", "theirs")  # b's run of svc-03 is still going
    assert isinstance(held, Lease)
    counts = _counting(engine)
    results: dict[str, tuple[str | None, Lease | Busy | None]] = {}

    async def fire(name: str) -> None:
        row = mine.claim_row(name, when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)
        results[name] = await a.claim(row)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(fire, name)
    assert counts["transactions"] == 1, counts  # insert the claims, lock, take the leases, skip svc-03: one commit
    assert counts["statements"] <= 6, counts
    assert results["svc-07"] == (None, None)  # claimed by the other node: nothing here
    run_id, busy = results["svc-03"]
    assert run_id is None and busy == Busy("b", "theirs")
    won = {name: got for name, got in results.items() if name not in ("svc-03", "svc-07")}
    assert all(isinstance(lease, Lease) and lease.run_id == rid and lease.token == 1 for rid, lease in won.values())
    skipped = (await mine.list_runs("svc-03", limit=5, offset=0))[0]
    assert [(r.status, r.error) for r in skipped] == [("skipped", "previous run theirs on b still in progress")]
    running = (await mine.list_runs("svc-00", limit=5, offset=0))[0]
    assert [(r.status, r.node, r.id) for r in running] == [("running", "a", won["svc-00"][0])]


async def test_replicas_claiming_the_same_fires_together_run_each_once(engine: AsyncEngine) -> None:
    names = [f"svc-{i:02d}" for i in range(20)]
    nodes_ = {n: (coordinator(engine, n), RunStore(engine, n)) for n in ("a", "b", "c")}
    await nodes_["a"][0].prepare(names)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for second in range(3):
        when = base + timedelta(seconds=second)
        outcome: dict[tuple[str, str], tuple[str | None, Lease | Busy | None]] = {}

        async def fire(node: str, name: str, when: datetime = when,
                       outcome: dict[tuple[str, str], tuple[str | None, Lease | Busy | None]] = outcome) -> None:
            coord, store = nodes_[node]
            row = store.claim_row(name, when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)
            outcome[node, name] = await coord.claim(row)

        async with anyio.create_task_group() as tg:
            for node in nodes_:
                for name in names:
                    tg.start_soon(fire, node, name)
        for name in names:
            winners = [(node, got) for (node, n), got in outcome.items() if n == name and got[0] is not None]
            assert len(winners) == 1, (name, outcome)
            node, (run_id, lease) = winners[0]
            assert isinstance(lease, Lease) and lease.token == second + 1
            losers = [got for (other, n), got in outcome.items() if n == name and other != node]
            assert losers == [(None, None), (None, None)]
            coord, store = nodes_[node]
            assert run_id is not None
            assert await store.finish(run_id, RunStatus.SUCCEEDED, finished_at=when, duration=0.0,
                                      fence=(name, lease.token), release_lease=True)
            coord.forget(lease)


async def test_outcomes_written_together_share_one_transaction(engine: AsyncEngine) -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    a, b = coordinator(engine, "a", ttl=1.5), coordinator(engine, "b", ttl=1.5)
    store = RunStore(engine, "a")
    names = [f"svc-{i:02d}" for i in range(10)]
    await a.prepare(names)
    claimed: dict[str, tuple[str, Lease]] = {}
    for name in names:
        row = store.claim_row(name, when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)
        run_id, lease = await a.claim(row)
        assert run_id is not None and isinstance(lease, Lease)
        claimed[name] = (run_id, lease)
    stale_run = claimed["svc-04"][0]

    async def b_takes_over() -> Lease | None:
        got = await b.acquire("svc-04", None)
        return got if isinstance(got, Lease) else None

    await until(b_takes_over, timeout=10, interval=0.05, what="the lease of svc-04 to expire")
    counts = _counting(engine)
    recorded: dict[str, bool] = {}

    async def finish(name: str) -> None:
        run_id, lease = claimed[name]
        recorded[name] = await store.finish(run_id, RunStatus.SUCCEEDED, finished_at=when, duration=0.1,
                                            fence=(name, lease.token), release_lease=True)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(finish, name)
    assert counts["transactions"] == 1, counts
    assert counts["statements"] <= 3 * 2 + 1, counts  # executemany may count per row on some drivers
    assert recorded == {name: name != "svc-04" for name in names}  # the superseded holder is fenced out
    async with engine.connect() as conn:
        rows = {r.scheduler: r.holder for r in await conn.execute(select(leases.c.scheduler, leases.c.holder))}
    assert rows == {name: ("b" if name == "svc-04" else None) for name in names}  # released, except b's
    assert stale_run and (await store.get_run(stale_run)).status == "running"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("closed_as", "retried"),
    [
        pytest.param(RunStatus.FAILED, True, id="failed-then-died-in-back-off"),
        pytest.param(RunStatus.ABANDONED, True, id="abandoned-by-its-own-restart"),
        pytest.param(RunStatus.TIMED_OUT, True, id="timed-out-then-died"),
        pytest.param(RunStatus.SUCCEEDED, False, id="succeeded"),
    ],
)
async def test_takeover_claims_the_retry_an_already_closed_attempt_is_owed(
    engine: AsyncEngine, closed_as: RunStatus, retried: bool
) -> None:
    """A node that dies after its attempt was closed but before it claimed the retry (waiting out the back-off,
    or restarted and closed its own orphan) still leaves the retry owed: the survivor's takeover claims it."""
    alive = coordinator(engine, "alive", ttl=1.5)
    survivor = service(engine, "alive", alive, interval="0 0 1 1 *")  # no fire of its own during the test
    dead_store = RunStore(engine, "dead")
    when = datetime.now(UTC) - timedelta(seconds=5)
    run_id = await dead_store.claim("job", when, attempt=1, trigger=Trigger.SCHEDULE, started_at=when)
    assert run_id is not None
    if closed_as is RunStatus.SUCCEEDED:
        await dead_store.finish(run_id, closed_as, finished_at=when, duration=0.1)
    else:
        assert await dead_store.resolve(run_id, closed_as, "closed before the node died", at=when)
    dead = coordinator(engine, "dead", ttl=1.5)
    lease = await dead.acquire("job", run_id)
    assert isinstance(lease, Lease)
    async with engine.begin() as conn:  # the dead node never renews: its lease has run out
        await conn.execute(leases.update().where(leases.c.scheduler == "job").values(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    async with anyio.create_task_group() as tg:
        await tg.start(survivor.serve)
        await alive.beat()
        if retried:
            await until(lambda: survivor.attempts == [2], what="the survivor to run the owed attempt 2")
            records, _ = await dead_store.list_runs("job", limit=10, offset=0)
            retry = next(r for r in records if r.attempt == 2)
            assert (retry.node, retry.trigger, retry.scheduled_for) == ("alive", "retry", when)
            assert (await dead_store.get_run(run_id)).status == closed_as.value  # type: ignore[union-attr]
            survivor.release.set()
        else:
            await alive.beat()  # a second look changes nothing: a succeeded fire time is owed nothing
            records, _ = await dead_store.list_runs("job", limit=10, offset=0)
            assert [r.attempt for r in records] == [1] and survivor.attempts == []
        tg.cancel_scope.cancel()


async def test_retry_is_claimed_when_the_next_fire_took_the_dead_holders_lease(engine: AsyncEngine) -> None:
    """The dead node's lease expired, and the service's next fire on a survivor took it before any heartbeat
    took it over: the orphan sweep closes the dead run as abandoned, and the heartbeat still claims its retry."""
    alive = coordinator(engine, "alive", ttl=1.5)
    survivor = service(engine, "alive", alive, interval="0 0 1 1 *")
    dead_store, alive_store = RunStore(engine, "dead"), RunStore(engine, "alive")
    first = datetime.now(UTC) - timedelta(seconds=5)
    run_id = await dead_store.claim("job", first, attempt=1, trigger=Trigger.SCHEDULE, started_at=first)
    assert run_id is not None
    dead = coordinator(engine, "dead", ttl=1.5)
    assert isinstance(await dead.acquire("job", run_id), Lease)
    async with engine.begin() as conn:  # the dead node never renews: its lease has run out
        await conn.execute(leases.update().where(leases.c.scheduler == "job").values(
            expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    second = first + timedelta(seconds=3)
    next_id, lease = await alive.claim(
        alive_store.claim_row("job", second, attempt=1, trigger=Trigger.SCHEDULE, started_at=second))
    assert next_id is not None and isinstance(lease, Lease)  # the next fire won the expired lease
    assert await alive_store.finish(next_id, RunStatus.SUCCEEDED, finished_at=second, duration=0.1,
                                    fence=("job", lease.token), release_lease=True)
    alive.forget(lease)
    assert (await dead_store.get_run(run_id)).status == "running"  # type: ignore[union-attr]
    async with anyio.create_task_group() as tg:
        await tg.start(survivor.serve)
        await alive.beat()
        await until(lambda: survivor.attempts == [2], what="the survivor to retry the superseded run")
        records, _ = await dead_store.list_runs("job", limit=10, offset=0)
        by_attempt = {(r.scheduled_for, r.attempt): r for r in records}
        assert by_attempt[(first, 1)].status == "abandoned"
        retry = by_attempt[(first, 2)]
        assert (retry.node, retry.trigger) == ("alive", "retry")
        survivor.release.set()
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("situation", "ttls_ago", "attempt", "renewed"),
    [
        pytest.param("a live node waits out the back-off", 0, 1, True, id="covered-by-a-live-lease"),
        pytest.param("its last attempt", 0, 2, False, id="no-retries-left"),
        pytest.param("history older than the horizon", 10, 1, False, id="too-old"),
    ],
)
async def test_closed_attempts_that_owe_no_retry_here_are_left_alone(
    engine: AsyncEngine, situation: str, ttls_ago: int, attempt: int, renewed: bool
) -> None:
    alive = coordinator(engine, "alive", ttl=1.5)
    survivor = service(engine, "alive", alive, interval="0 0 1 1 *")  # max_retries 1
    other_store = RunStore(engine, "other")
    when = datetime.now(UTC) - timedelta(seconds=1.5 * ttls_ago + 5)
    run_id = await other_store.claim("job", when, attempt=attempt, trigger=Trigger.SCHEDULE, started_at=when)
    assert run_id is not None
    assert await other_store.resolve(run_id, RunStatus.FAILED, "boom", at=when + timedelta(seconds=1))
    if renewed:
        other = coordinator(engine, "other", ttl=1.5)
        assert isinstance(await other.acquire("job", run_id), Lease)
    async with anyio.create_task_group() as tg:
        await tg.start(survivor.serve)
        await alive.beat()
        await alive.beat()
        records, _ = await other_store.list_runs("job", limit=10, offset=0)
        assert [r.attempt for r in records] == [attempt], situation
        assert survivor.attempts == [], situation
        tg.cancel_scope.cancel()
