"""storage.transfer: copying between engines row for row, the JSON state file, and the first-start legacy import."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, insert, null, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.runs import RunStatus, Trigger
from storage import schema, transfer
from storage.engine import create_engine
from storage.migrate import current, head, upgrade
from storage.transfer import (
    FORMAT,
    ImportResult,
    StateFileError,
    TransferError,
    copy_storage,
    export_state,
    import_legacy_state,
)
from storage.types import UTCDateTime

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 3, 31, 0, 59, 59, 999_999, tzinfo=UTC)
BIG = 2**62
TOKEN_MAX = 2**63 - 1
N_RUNS = 3000
LEGACY_T0 = datetime(2023, 6, 1, tzinfo=timezone(timedelta(hours=2)))
TABLES = [schema.runs, schema.service_state, schema.leases, schema.nodes]


# -- data ------------------------------------------------------------------------------------------------------


def _runs(n: int) -> list[dict[str, Any]]:
    statuses = [s.value for s in RunStatus if s is not RunStatus.RUNNING]
    rows = []
    for i in range(n):
        scheduled = T0 + timedelta(seconds=37 * i, microseconds=(i * 7919) % 1_000_000)
        finished = i % 5 != 0
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "scheduler": f"svc-{i % 4}",
                "scheduled_for": scheduled,
                "attempt": 1 + i % 3,
                "trigger": [t.value for t in Trigger][i % 3],
                "status": statuses[i % len(statuses)],
                "node": f"node-{i % 2}",
                "started_at": scheduled + timedelta(microseconds=1 + i),
                "finished_at": scheduled + timedelta(seconds=1, microseconds=i) if finished else None,
                "duration_seconds": (i / 7) if finished else None,
                "lag_seconds": 1e-6 * i if i % 2 else None,
                "items_processed": i,
                "error": f"échec n°{i} ✗ 💥 \"quoted\"\nsecond line" if i % 3 == 0 else None,
                "fencing_token": BIG + i if i % 4 else None,
            }
        )
    return rows


def _states() -> list[dict[str, Any]]:
    base = {"status": "RUNNING", "consecutive_failures": 2, "node": "node-0", "updated_at": T0}
    return [
        {
            **base,
            "scheduler": "svc-0",
            "paused": False,
            "overrides": {"interval": "@every 10m", "max_retries": 5, "retry_backoff": 1.1, "big": 2**70,
                          "nested": {"list": [1, "two", None, True, 0.1]}, "ünï": "☃"},
            "anchor_at": T0 - timedelta(days=400, microseconds=1),
            "last_fire_at": T0 + timedelta(microseconds=123_456),
        },
        {**base, "scheduler": "svc-1", "paused": True, "overrides": null(), "anchor_at": None, "last_fire_at": None},
        {**base, "scheduler": "svc-2", "paused": False, "overrides": JSON.NULL, "anchor_at": T0, "last_fire_at": T0},
        {**base, "scheduler": "svc-3", "paused": False, "overrides": {}, "anchor_at": None, "last_fire_at": None,
         "node": None, "consecutive_failures": 0},
    ]


def _leases() -> list[dict[str, Any]]:
    return [
        {"scheduler": "svc-0", "holder": "node-0", "fencing_token": TOKEN_MAX, "run_id": str(uuid.uuid4()),
         "acquired_at": T0, "expires_at": T0 + timedelta(seconds=60)},
        {"scheduler": "svc-1", "holder": None, "fencing_token": BIG + 7, "run_id": None,
         "acquired_at": T0 - timedelta(microseconds=5), "expires_at": None},
    ]


def _nodes() -> list[dict[str, Any]]:
    return [
        {"node_id": "node-0", "hostname": "host-a", "pid": 4242, "version": "0.1.0", "services": ["svc-0", "svc-1"],
         "started_at": T0, "heartbeat_at": T0 + timedelta(microseconds=999_999), "stopped_at": None},
        {"node_id": "node-1", "hostname": "host-b", "pid": 1, "version": "0.1.0", "services": None,
         "started_at": T0, "heartbeat_at": T0, "stopped_at": T0 + timedelta(hours=1)},
    ]


async def _populate(url: str, n_runs: int = N_RUNS) -> None:
    await upgrade(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(schema.service_state), _states())
            await conn.execute(insert(schema.runs), _runs(n_runs))
            await conn.execute(insert(schema.leases), _leases())
            await conn.execute(insert(schema.nodes), _nodes())
    finally:
        await engine.dispose()


async def _dump(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table in primary-key order, with whether each JSON value is SQL NULL."""
    engine = create_engine(url)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        async with engine.connect() as conn:
            for table in TABLES:
                json_columns = [c for c in table.columns if isinstance(c.type, JSON)]
                flags = [c.is_(None).label(f"{c.name}__is_sql_null") for c in json_columns]
                rows = await conn.execute(select(table, *flags).order_by(*table.primary_key.columns))
                out[table.name] = [
                    {key: bool(value) if key.endswith("__is_sql_null") else value for key, value in row.items()}
                    for row in rows.mappings()
                ]
    finally:
        await engine.dispose()
    return out


def _files(directory: Path, pattern: str = "*") -> list[str]:
    return sorted(p.name for p in directory.glob(pattern))


@pytest.fixture
def other_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'other.db'}"


# -- copy_storage ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [
        pytest.param("sqlite_url", "postgres_url", id="sqlite-to-postgresql", marks=pytest.mark.postgresql),
        pytest.param("sqlite_url", "mysql_url", id="sqlite-to-mariadb", marks=pytest.mark.mysql),
        pytest.param("postgres_url", "other_sqlite_url", id="postgresql-to-sqlite", marks=pytest.mark.postgresql),
        pytest.param(
            "mysql_url", "postgres_url", id="mariadb-to-postgresql", marks=[pytest.mark.mysql, pytest.mark.postgresql]
        ),
    ],
)
async def test_copy_keeps_every_row_exactly(source: str, target: str, request: pytest.FixtureRequest) -> None:
    source_url: str = request.getfixturevalue(source)
    target_url: str = request.getfixturevalue(target)
    await _populate(source_url)
    before = await _dump(source_url)
    calls: list[tuple[str, int]] = []

    counts = await copy_storage(source_url, target_url, batch_size=700, progress=lambda t, n: calls.append((t, n)))

    scheduler = {name: rows for name, rows in counts.items() if name.startswith("scheduler_")}
    assert scheduler == {"scheduler_runs": N_RUNS, "scheduler_state": 4, "scheduler_leases": 2, "scheduler_nodes": 2}
    assert counts["ai_model_pricing"] == 4  # the seeded prices replaced, not refused, not doubled
    assert await current(target_url) == head()
    after = await _dump(target_url)
    assert await _dump(source_url) == before  # the source is only read
    released = [{**row, "holder": None, "run_id": None, "expires_at": None} for row in before["scheduler_leases"]]
    assert after == {**before, "scheduler_leases": released}
    # Spot checks of what "exactly" means: microseconds, aware UTC, tokens beyond 32 bits, SQL NULL vs JSON null.
    state = {row["scheduler"]: row for row in after["scheduler_state"]}
    assert state["svc-0"]["anchor_at"] == T0 - timedelta(days=400, microseconds=1)
    assert state["svc-0"]["overrides"]["big"] == 2**70
    assert (state["svc-1"]["overrides__is_sql_null"], state["svc-2"]["overrides__is_sql_null"]) == (True, False)
    assert max(row["fencing_token"] for row in after["scheduler_leases"]) == TOKEN_MAX
    assert [n for t, n in calls if t == "scheduler_runs"] == [700, 1400, 2100, 2800, 3000]
    assert ("scheduler_nodes", 2) in calls


async def test_copy_from_sqlite_to_sqlite_in_one_batch_per_row(sqlite_url: str, other_sqlite_url: str) -> None:
    await _populate(sqlite_url, n_runs=5)
    counts = await copy_storage(sqlite_url, other_sqlite_url, batch_size=1)
    assert counts["scheduler_runs"] == 5
    before, after = await _dump(sqlite_url), await _dump(other_sqlite_url)
    assert after["scheduler_runs"] == before["scheduler_runs"]
    assert after["scheduler_state"] == before["scheduler_state"]


async def test_copy_refuses_a_target_with_rows_and_leaves_it_alone(sqlite_url: str, other_sqlite_url: str) -> None:
    await _populate(sqlite_url, n_runs=10)
    await _populate(other_sqlite_url, n_runs=3)
    before = await _dump(other_sqlite_url)

    with pytest.raises(TransferError, match=r"already has scheduler rows: scheduler_runs \(3 rows\)") as info:
        await copy_storage(sqlite_url, other_sqlite_url)

    assert "scheduler_state (4 rows)" in str(info.value)
    assert "--overwrite" in str(info.value)
    assert await _dump(other_sqlite_url) == before


@pytest.mark.postgresql
async def test_overwrite_replaces_the_target_rows(sqlite_url: str, postgres_url: str) -> None:
    await _populate(sqlite_url, n_runs=50)
    await _populate(postgres_url, n_runs=80)  # other runs, and the same service and node names

    counts = await copy_storage(sqlite_url, postgres_url, overwrite=True, batch_size=20)

    assert counts["scheduler_runs"] == 50
    source, target = await _dump(sqlite_url), await _dump(postgres_url)
    assert target["scheduler_runs"] == source["scheduler_runs"]
    assert target["scheduler_state"] == source["scheduler_state"]
    assert target["scheduler_nodes"] == source["scheduler_nodes"]


async def test_source_must_be_migrated_first(sqlite_url: str, other_sqlite_url: str) -> None:
    await upgrade(sqlite_url, "0001_core")
    with pytest.raises(TransferError, match=r"at migration 0001_core .*: migrate the source first"):
        await copy_storage(sqlite_url, other_sqlite_url)


async def test_source_never_migrated(tmp_path: Path, other_sqlite_url: str) -> None:
    empty = tmp_path / "empty.db"
    engine = create_engine(f"sqlite:///{empty}")
    async with engine.connect():
        pass  # creates the file, no tables
    await engine.dispose()
    with pytest.raises(TransferError, match=r"at migration \(none\) .*migrate the source first"):
        await copy_storage(f"sqlite:///{empty}", other_sqlite_url)


async def test_missing_sqlite_source_is_not_created(tmp_path: Path, other_sqlite_url: str) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(TransferError, match="does not exist"):
        await copy_storage(f"sqlite:///{missing}", other_sqlite_url)
    assert not missing.exists()


async def test_source_and_target_must_differ(sqlite_url: str, tmp_path: Path) -> None:
    await _populate(sqlite_url, n_runs=1)
    same = f"sqlite:///{tmp_path}/../{tmp_path.name}/test.db"
    with pytest.raises(TransferError, match="same database"):
        await copy_storage(sqlite_url, same, overwrite=True)
    assert len((await _dump(sqlite_url))["scheduler_runs"]) == 1


@pytest.mark.postgresql
async def test_same_database_spelled_differently_is_refused_or_survives(postgres_url: str) -> None:
    await _populate(postgres_url, n_runs=30)
    before = await _dump(postgres_url)
    without_port = postgres_url.replace(":5432/", "/")
    with pytest.raises(TransferError, match="same database"):
        await copy_storage(postgres_url, without_port, overwrite=True)
    # An alias the URLs do not reveal (localhost is 127.0.0.1): the source snapshot is read before the target's
    # rows are deleted, so the rows come back instead of being lost.
    alias = postgres_url.replace("127.0.0.1", "localhost")
    counts = await copy_storage(postgres_url, alias, overwrite=True)
    assert counts["scheduler_runs"] == 30
    after = await _dump(postgres_url)
    assert after["scheduler_runs"] == before["scheduler_runs"]
    assert after["scheduler_state"] == before["scheduler_state"]


async def test_keyset_pagination_over_a_composite_key(tmp_path: Path) -> None:
    """Tables other modules add are copied generically: composite keys, JSON, timestamps in the key."""
    md = MetaData()
    table = Table(
        "extra_items",
        md,
        Column("kind", String(10), primary_key=True),
        Column("at", UTCDateTime(), primary_key=True),
        Column("n", Integer, primary_key=True, autoincrement=False),
        Column("payload", JSON, nullable=True),
        Column("plain", DateTime(), nullable=True),
    )
    rows = [
        {"kind": kind, "at": T0 + timedelta(microseconds=m), "n": n, "payload": {"k": [kind, m, n]} if n else null(),
         "plain": None}
        for kind in ("b", "a", "c") for m in (3, 1, 2) for n in (1, 0)
    ]
    source = create_engine(f"sqlite:///{tmp_path / 's.db'}")
    target = create_engine(f"sqlite:///{tmp_path / 't.db'}")
    try:
        for engine in (source, target):
            async with engine.begin() as conn:
                await conn.run_sync(md.create_all)
        async with source.begin() as conn:
            await conn.execute(insert(table), rows)
        seen: list[int] = []
        async with source.connect() as src:
            copied = await transfer._copy_table(src, target, table, 4, lambda _t, n: seen.append(n))
        assert copied == len(rows) == 18
        assert seen == [4, 8, 12, 16, 18]

        async def read(engine: Any) -> list[Any]:
            async with engine.connect() as conn:
                result = await conn.execute(select(table, table.c.payload.is_(None)).order_by(*table.primary_key))
                return list(result.all())

        assert await read(target) == await read(source)
    finally:
        await source.dispose()
        await target.dispose()


# -- export and import -----------------------------------------------------------------------------------------


async def test_export_then_import_round_trip(other_sqlite_url: str, db_url: str, tmp_path: Path) -> None:
    await _populate(other_sqlite_url, n_runs=2500)
    path = tmp_path / "state" / "schedules.json"

    counts = await export_state(other_sqlite_url, path)

    assert counts == {"services": 4, "runs": 2500}
    assert _files(path.parent) == ["schedules.json"]  # no temporary file left
    document = json.loads(path.read_text(encoding="utf-8"))
    assert (document["format"], document["version"]) == (FORMAT, 1)
    assert datetime.fromisoformat(document["exported_at"]).tzinfo is not None
    assert set(document["services"]["svc-0"]) == {"paused", "overrides", "anchor_at", "last_fire_at"}
    assert set(document["runs"][0]) == set(transfer._RUN_FIELDS)

    await upgrade(db_url)
    result = await import_legacy_state(db_url, path)

    assert result is not None
    assert (result.status, result.services, result.runs, result.already_present) == ("imported", 4, 2500, 0)
    assert result.backup is not None and result.backup.exists() and not path.exists()
    source, target = await _dump(other_sqlite_url), await _dump(db_url)
    fields = list(transfer._RUN_FIELDS)
    assert [{k: r[k] for k in fields} for r in target["scheduler_runs"]] == [
        {k: r[k] for k in fields} for r in source["scheduler_runs"]
    ]
    assert {r["fencing_token"] for r in target["scheduler_runs"]} == {None}
    kept = ["scheduler", "paused", "overrides", "anchor_at", "last_fire_at"]
    assert [{k: r[k] for k in kept} for r in target["scheduler_state"]] == [
        {k: r[k] for k in kept} for r in source["scheduler_state"]
    ]
    assert {r["status"] for r in target["scheduler_state"]} == {"STOPPED"}
    assert target["scheduler_leases"] == target["scheduler_nodes"] == []


async def test_export_of_an_empty_database(sqlite_url: str, tmp_path: Path) -> None:
    await upgrade(sqlite_url)
    path = tmp_path / "empty.json"
    assert await export_state(sqlite_url, path) == {"services": 0, "runs": 0}
    document = json.loads(path.read_text(encoding="utf-8"))
    assert (document["services"], document["runs"]) == ({}, [])


async def test_export_replaces_a_previous_file_atomically(sqlite_url: str, tmp_path: Path) -> None:
    await _populate(sqlite_url, n_runs=3)
    path = tmp_path / "state.json"
    path.write_text("old", encoding="utf-8")
    await export_state(sqlite_url, path)
    assert len(json.loads(path.read_text(encoding="utf-8"))["runs"]) == 3
    assert _files(tmp_path, ".*") == []


def _legacy(n_runs: int = 40) -> dict[str, Any]:
    """A hand-written legacy file: offsets other than Z, milliseconds, missing optional fields and ids."""
    runs: list[dict[str, Any]] = []
    for i in range(n_runs):
        run: dict[str, Any] = {
            "scheduler": "daily-report" if i % 2 else "run-history-retention",
            "scheduled_for": (LEGACY_T0 + timedelta(hours=i, milliseconds=i % 1000)).isoformat(timespec="milliseconds"),
            "status": "succeeded" if i % 3 else "failed",
        }
        if i % 5:
            run.update(id=f"legacy-{i:04d}", attempt=1, trigger="schedule", node="old-box",
                       started_at="2023-06-01T00:00:01Z", finished_at="2023-06-01T00:00:02.5Z",
                       duration_seconds=1.5, lag_seconds=0, items_processed=i, error=None if i % 3 else "boom")
        runs.append(run)
    return {
        "format": FORMAT,
        "version": 1,
        "exported_at": "2023-07-01T00:00:00Z",
        "services": {
            "daily-report": {"paused": True, "overrides": {"interval": "0 6 * * *"}, "anchor_at": None,
                             "last_fire_at": "2023-06-10T04:00:00Z"},
            "run-history-retention": {},
        },
        "runs": runs,
    }


def _write(path: Path, document: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


async def test_legacy_import_on_an_empty_database_keeps_the_file_as_backup(db_url: str, tmp_path: Path) -> None:
    await upgrade(db_url)
    path = _write(tmp_path / ".visor" / "schedules.json", _legacy())

    result = await import_legacy_state(db_url, path)

    assert result is not None
    assert (result.status, result.services, result.runs) == ("imported", 2, 40)
    assert not path.exists()
    assert result.backup is not None
    assert _files(path.parent, "schedules.json.imported-*.bak") == [result.backup.name]
    assert result.backup.read_text(encoding="utf-8") == json.dumps(_legacy())  # preserved byte for byte
    assert result.message.startswith("imported 2 services and 40 runs")
    rows = await _dump(db_url)
    by_id = {r["id"]: r for r in rows["scheduler_runs"]}
    assert by_id["legacy-0001"]["scheduled_for"] == datetime(2023, 5, 31, 23, 0, 0, 1000, tzinfo=UTC)
    assert by_id["legacy-0001"]["finished_at"] == datetime(2023, 6, 1, 0, 0, 2, 500_000, tzinfo=UTC)
    assert by_id["legacy-0001"]["node"] == "old-box"
    derived = [r for r in rows["scheduler_runs"] if not r["id"].startswith("legacy-")]
    assert len(derived) == 8
    assert {(r["attempt"], r["trigger"], r["node"], r["items_processed"]) for r in derived} == {
        (1, "schedule", "legacy-import", 0)
    }
    state = {r["scheduler"]: r for r in rows["scheduler_state"]}
    assert state["daily-report"]["paused"] is True
    assert state["daily-report"]["overrides"] == {"interval": "0 6 * * *"}
    assert state["run-history-retention"]["overrides"] is None
    assert state["run-history-retention"]["overrides__is_sql_null"] is True


async def test_legacy_import_skips_a_database_in_use(db_url: str, tmp_path: Path) -> None:
    await upgrade(db_url)
    engine = create_engine(db_url)
    async with engine.begin() as conn:
        await conn.execute(insert(schema.service_state), _states()[3])
    await engine.dispose()
    path = _write(tmp_path / "schedules.json", _legacy())

    result = await import_legacy_state(db_url, path)

    assert result is not None and result.status == "skipped"
    assert result.message.startswith("skipped: database not empty")
    assert path.exists() and _files(tmp_path, "*.bak") == []
    assert (await _dump(db_url))["scheduler_runs"] == []


async def test_legacy_import_skips_even_a_malformed_file_when_the_database_is_in_use(
    sqlite_url: str, tmp_path: Path
) -> None:
    await _populate(sqlite_url, n_runs=1)
    path = _write(tmp_path / "schedules.json", "{not json")
    result = await import_legacy_state(sqlite_url, path)
    assert result is not None and result.status == "skipped"


async def test_no_file_means_nothing_to_do(sqlite_url: str, tmp_path: Path) -> None:
    await upgrade(sqlite_url)
    assert await import_legacy_state(sqlite_url, tmp_path / "missing.json") is None


async def test_import_needs_a_migrated_database(sqlite_url: str, tmp_path: Path) -> None:
    path = _write(tmp_path / "schedules.json", _legacy())
    with pytest.raises(TransferError, match="python -m manager migrate"):
        await import_legacy_state(sqlite_url, path)
    assert path.exists()


def _set(document: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    """Set a value by a dotted path with [i] indexes; a value of ... deletes the key."""
    target: Any = document
    parts = where.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is ...:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return document


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: "{\"format\": ", "not valid JSON: Expecting value at line 1 column 12"),
        (lambda d: [d], "expected a JSON object"),
        (lambda d: _set(d, "format", "visor"), 'format: expected "livedash-schedulers-state" (got "visor")'),
        (lambda d: _set(d, "version", 2), "version: expected 1"),
        (lambda d: _set(d, "exported_at", 17), "exported_at: not an ISO timestamp (got 17)"),
        (lambda d: _set(d, "runs[3].scheduled_for", "yesterday"),
         'runs[3].scheduled_for: not an ISO timestamp (got "yesterday")'),
        (lambda d: _set(d, "runs[1].started_at", "2023-06-01T00:00:01"),
         "runs[1].started_at: ISO timestamp without a UTC offset"),
        (lambda d: _set(d, "runs[2].status", "done"), "runs[2].status: expected one of abandoned, cancelled"),
        (lambda d: _set(d, "runs[2].scheduler", ...), "runs[2].scheduler: missing (required)"),
        (lambda d: _set(d, "runs[0].schedule_for", "2023-06-01T00:00:00Z"), "runs[0].schedule_for: unknown field"),
        (lambda d: _set(d, "runs[6].id", "legacy-0001"), "runs[6].id: 'legacy-0001' is also the id of runs[1]"),
        (lambda d: _set(d, "runs[6].attempt", 0), "runs[6].attempt: expected a whole number from 1"),
        (lambda d: _set(d, "runs[7].duration_seconds", "1.5"), "runs[7].duration_seconds: expected a number"),
        (lambda d: _set(d, "runs[9].scheduler", "x" * 101), "runs[9].scheduler: longer than 100 characters"),
        (lambda d: _set(d, "runs[11]", "run"), "runs[11]: expected an object"),
        (lambda d: _set(d, "runs", {}), "runs: expected an array"),
        (lambda d: _set(d, "services.daily-report.paused", "yes"),
         'services.daily-report.paused: expected true or false (got "yes")'),
        (lambda d: _set(d, "services.daily-report.overrides", [1]), "services.daily-report.overrides: expected an"),
        (lambda d: _set(d, "services.daily-report.anchor_at", "2023-13-01T00:00:00Z"),
         "services.daily-report.anchor_at: not an ISO timestamp"),
    ],
)
async def test_malformed_file_names_the_first_bad_entry_and_imports_nothing(
    sqlite_url: str, tmp_path: Path, change: Any, expected: str
) -> None:
    await upgrade(sqlite_url)
    path = _write(tmp_path / "schedules.json", change(_legacy()))

    with pytest.raises(StateFileError) as info:
        await import_legacy_state(sqlite_url, path)

    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)
    assert path.exists() and _files(tmp_path, "*.bak") == []
    rows = await _dump(sqlite_url)
    assert rows["scheduler_runs"] == rows["scheduler_state"] == []


async def test_duplicate_fire_time_in_the_file_is_an_error(tmp_path: Path) -> None:
    document = _legacy()
    document["runs"][3] = {**document["runs"][1], "id": "other"}
    with pytest.raises(StateFileError, match=r"runs\[3\]: same scheduler, scheduled_for and attempt as runs\[1\]"):
        transfer.parse_state(json.dumps(document), tmp_path / "x.json")


async def _import_both(db_url: str, paths: list[Path]) -> list[ImportResult]:
    results: list[ImportResult] = []

    async def one(path: Path) -> None:
        result = await import_legacy_state(db_url, path)
        assert result is not None
        results.append(result)

    async with anyio.create_task_group() as tg:
        for path in paths:
            tg.start_soon(one, path)
    return results


async def _assert_one_copy(db_url: str, document: dict[str, Any]) -> None:
    rows = await _dump(db_url)
    ids = [r["id"] for r in rows["scheduler_runs"]]
    assert len(ids) == len(set(ids)) == len(document["runs"])
    fire_times = {(r["scheduler"], r["scheduled_for"], r["attempt"]) for r in rows["scheduler_runs"]}
    assert len(fire_times) == len(document["runs"])
    assert sorted(r["scheduler"] for r in rows["scheduler_state"]) == sorted(document["services"])


async def test_two_replicas_importing_at_once_store_each_row_once(db_url: str, tmp_path: Path) -> None:
    await upgrade(db_url)
    document = _legacy(n_runs=1500)
    paths = [_write(tmp_path / f"replica-{i}" / "schedules.json", document) for i in (1, 2)]

    results = await _import_both(db_url, paths)

    await _assert_one_copy(db_url, document)
    by_status = sorted(results, key=lambda r: r.status)
    assert [r.status for r in by_status] == ["imported", "skipped"]
    assert (by_status[0].services, by_status[0].runs) == (2, 1500)
    assert by_status[1].message.startswith("skipped: database not empty")


async def test_insert_ignore_alone_keeps_concurrent_importers_from_duplicating(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the importers' lock (PostgreSQL, MariaDB), both may find the database empty; the keys still hold."""

    @contextlib.asynccontextmanager
    async def no_lock(conn: AsyncConnection) -> AsyncIterator[None]:
        yield

    monkeypatch.setattr(transfer, "_import_lock", no_lock)
    await upgrade(db_url)
    document = _legacy(n_runs=1500)
    path = _write(tmp_path / "shared" / "schedules.json", document)
    second = tmp_path / "copy" / "schedules.json"
    second.parent.mkdir()
    shutil.copy(path, second)

    results = await _import_both(db_url, [path, second])

    await _assert_one_copy(db_url, document)
    imported = [r for r in results if r.status == "imported"]
    assert sum(r.services + r.runs for r in imported) == 2 + 1500
    for r in imported:
        assert r.services + r.runs + r.already_present == 2 + 1500


async def test_same_file_imported_by_two_processes_at_once(db_url: str, tmp_path: Path) -> None:
    """Replicas sharing one volume: the loser of the rename does not fail, and one backup remains."""
    await upgrade(db_url)
    document = _legacy(n_runs=200)
    path = _write(tmp_path / "schedules.json", document)

    results = await _import_both(db_url, [path, path])

    await _assert_one_copy(db_url, document)
    assert not path.exists()
    assert len(_files(tmp_path, "schedules.json.imported-*.bak")) == 1
    assert any(r.status == "imported" and r.backup is not None for r in results)


def test_the_file_format_knows_every_run_status_and_trigger() -> None:
    assert {s.value for s in RunStatus} == transfer.RUN_STATUSES
    assert {t.value for t in Trigger} == transfer.RUN_TRIGGERS


def test_timestamps_with_offsets_are_stored_as_utc(tmp_path: Path) -> None:
    document = _legacy(n_runs=2)
    document["runs"][0]["scheduled_for"] = "2024-10-27T02:30:00.123456+05:45"
    _, rows = transfer.parse_state(json.dumps(document), tmp_path / "x.json")
    expected = datetime(2024, 10, 27, 2, 30, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=45)))
    assert rows[0]["scheduled_for"] == expected
    assert rows[0]["scheduled_for"].tzinfo is UTC
