"""Local analysis throughput: session-processing with the local provider, one and two replica processes.

    python -m bench.analysis [--sessions 10000] [--replicas 1,2] [--chunk 500] [--engine postgresql]
                             [--out bench/results]

For each replica count a fresh database is created (PostgreSQL by default; dropped afterwards), migrated and
loaded with ``--sessions`` sessions of four-message HR chats in English, German, Dutch and French, each with
its five stage rows (AI_ANALYSIS PENDING). Then that many worker processes (``python -m bench.analysis
--worker``) start, connect, warm up and are released together; each runs the session-processing work
(:class:`services.session_processing.SessionProcessing`: claim with SKIP LOCKED, load transcripts, analyse,
write results, questions and a cost row in one fenced transaction per claimed batch) until the backlog is
empty. Throughput is sessions / (last worker done - release). The audit checks that every session was
analysed exactly once: one COMPLETED AI_ANALYSIS and one ai_processing_requests row per session.

The workers call the service's run directly rather than ``python -m runner --once``: a runner holds the
service's fleet-wide lease, so two runners of one instance take turns by design; replicas that share one
backlog are separate instances (or, as here, separate claim owners), which is what this measures.

Target (from the issue): >= 1,000 sessions/s on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.model import CompanyStatus, RequestStatus, Stage, StageStatus
from domain.tables import ai_processing_requests, companies, messages, processing_status, sessions
from storage.engine import create_engine
from storage.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
CHATS: list[list[tuple[str, str]]] = [
    [
        ("user", "Hi, how many vacation days do I have left this year?"),
        ("assistant", "You have 12 days of annual leave left."),
        ("user", "Great, thanks! Can I carry them over to next year?"),
        ("assistant", "Up to 5 days can be carried over."),
    ],
    [
        ("user", "Hallo, ich bin seit gestern krank. Muss ich eine Krankmeldung vom Arzt schicken?"),
        ("assistant", "Ja, ab dem dritten Tag brauchen Sie ein Attest."),
        ("user", "Ich möchte eine Beschwerde einreichen und mit meinem Vorgesetzten sprechen."),
        ("assistant", "Bitte wenden Sie sich an die Personalabteilung: personal@example.com."),
    ],
    [
        ("user", "Hoi, wanneer wordt mijn salaris uitbetaald?"),
        ("assistant", "Het loon wordt op de 25e uitbetaald."),
        ("user", "En waar kan ik mijn loonstrook vinden?"),
        ("assistant", "Je loonstrook staat in de app."),
    ],
    [
        ("user", "Bonjour, je ne peux pas me connecter. J'ai oublié mon mot de passe, que dois-je faire ?"),
        ("assistant", "Vous pouvez réinitialiser le mot de passe sur le portail."),
        ("user", "Merci, ça marche."),
        ("assistant", "Avec plaisir !"),
    ],
]
_ROWS_PER_INSERT = 5000


async def seed(
    engine: AsyncEngine,
    count: int,
    *,
    now: datetime,
    empty_every: int = 0,
    company_status: CompanyStatus = CompanyStatus.ACTIVE,
    default_model: str | None = None,
    vary_questions: bool = True,
) -> list[str]:
    """``count`` sessions of one new company, each with a four-message chat (none for every ``empty_every``-th)
    and its five stage rows, the AI stages PENDING; returns the session ids in creation order.

    ``vary_questions`` appends the session number to each user message, so question texts are not all shared.
    """
    company_id = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(count)]
    async with engine.begin() as conn:
        await conn.execute(
            insert(companies).values(
                id=company_id,
                name=f"bench-{company_id[:8]}",
                status=company_status.value,
                csv_url="file:///dev/null",
                timezone="UTC",
                default_model=default_model,
                created_at=now,
                updated_at=now,
            )
        )
        session_rows: list[dict[str, Any]] = []
        message_rows: list[dict[str, Any]] = []
        status_rows: list[dict[str, Any]] = []
        for n, session_id in enumerate(ids):
            start = now - timedelta(hours=1)
            session_rows.append(
                {
                    "id": session_id,
                    "company_id": company_id,
                    "external_session_id": f"ext-{n}-{session_id[:8]}",
                    "start_time": start,
                    "end_time": start + timedelta(minutes=5),
                    "created_at": now + timedelta(microseconds=n),
                    "updated_at": now,
                }
            )
            if not (empty_every and n % empty_every == 0):
                for position, (role, content) in enumerate(CHATS[n % len(CHATS)]):
                    text = content.replace("?", f" #{n}?") if vary_questions and role == "user" else content
                    message_rows.append(
                        {
                            "session_id": session_id,
                            "position": position,
                            "timestamp": start + timedelta(minutes=position * 3),
                            "role": role.upper() if position == 0 else role,  # counted case-insensitively
                            "content": text,
                            "created_at": now,
                        }
                    )
            for stage in Stage:
                done = stage in (Stage.CSV_IMPORT, Stage.TRANSCRIPT_FETCH, Stage.SESSION_CREATION)
                status_rows.append(
                    {
                        "id": str(uuid.uuid4()),
                        "session_id": session_id,
                        "stage": stage.value,
                        "status": (StageStatus.COMPLETED if done else StageStatus.PENDING).value,
                        "retry_count": 0,
                        "created_at": now + timedelta(microseconds=n),
                        "updated_at": now,
                    }
                )
        for table, rows in ((sessions, session_rows), (messages, message_rows), (processing_status, status_rows)):
            for start_at in range(0, len(rows), _ROWS_PER_INSERT):
                await conn.execute(insert(table), rows[start_at : start_at + _ROWS_PER_INSERT])
    return ids


async def audit(engine: AsyncEngine) -> dict[str, int]:
    """Sessions whose AI_ANALYSIS completed, cost rows, and sessions analysed other than exactly once."""
    async with engine.connect() as conn:
        completed = (
            await conn.execute(
                select(func.count()).where(
                    processing_status.c.stage == Stage.AI_ANALYSIS.value,
                    processing_status.c.status == StageStatus.COMPLETED.value,
                )
            )
        ).scalar_one()
        per_session = (
            select(ai_processing_requests.c.session_id, func.count().label("n"))
            .where(ai_processing_requests.c.processing_status == RequestStatus.PROCESSING_COMPLETE.value)
            .group_by(ai_processing_requests.c.session_id)
            .subquery()
        )
        requests = (await conn.execute(select(func.coalesce(func.sum(per_session.c.n), 0)))).scalar_one()
        twice = (await conn.execute(select(func.count()).where(per_session.c.n != 1))).scalar_one()
        pending = (
            await conn.execute(
                select(func.count()).where(
                    processing_status.c.stage == Stage.AI_ANALYSIS.value,
                    processing_status.c.status != StageStatus.COMPLETED.value,
                )
            )
        ).scalar_one()
    return {"completed": int(completed), "requests": int(requests), "not_once": int(twice), "left": int(pending)}


# ------------------------------------------------------------------------------------------------ worker


def _ready_then_go(ready: Path, go: Path, owner: str) -> None:
    ready.write_text(owner)
    while not go.exists():
        time.sleep(0.005)


async def worker(url: str, owner: str, chunk: int, ready: Path, go: Path, report: Path) -> None:
    """One replica: connect and warm up, say ready, wait for the go file, drain the backlog, write a report."""
    from services.session_processing import SessionProcessing, SessionProcessingConfig

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(select(func.count()).select_from(companies))
        await anyio.to_thread.run_sync(_ready_then_go, ready, go, owner)
        started = time.time()
        run = SessionProcessing(
            engine,
            owner=owner,
            config=SessionProcessingConfig(batch_size=0),
            now=lambda: datetime.now(UTC),
            chunk=chunk,
        )
        result = await run.run()
        finished = time.time()
        summary = json.dumps(
            {
                "owner": owner,
                "analysed": result.analysed,
                "skipped": result.skipped,
                "lost": result.lost,
                "batches": result.batches,
                "started": started,
                "finished": finished,
            }
        )
        await anyio.to_thread.run_sync(report.write_text, summary)
    finally:
        await engine.dispose()


def start_workers(url: str, replicas: int, chunk: int, tmp: Path) -> tuple[list[subprocess.Popen[bytes]], Path]:
    """Start the worker processes; they wait for ``tmp/go``. Returns them and the go file."""
    go = tmp / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    for n in range(replicas):
        args = [sys.executable, "-m", "bench.analysis", "--worker", "--url", url, "--owner", f"replica-{n}",
                "--chunk", str(chunk), "--ready", str(tmp / f"ready-{n}"), "--go", str(go),
                "--report", str(tmp / f"report-{n}.json")]  # fmt: skip
        procs.append(subprocess.Popen(args, env=env, cwd=tmp, stderr=open(tmp / f"worker-{n}.log", "wb")))  # noqa: SIM115
    return procs, go


def wait_ready(procs: Sequence[subprocess.Popen[bytes]], tmp: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all((tmp / f"ready-{n}").exists() for n in range(len(procs))):
        for n, proc in enumerate(procs):
            if proc.poll() is not None:
                raise RuntimeError(f"worker {n} exited {proc.returncode}: {(tmp / f'worker-{n}.log').read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError("workers not ready in time")
        time.sleep(0.01)


def collect(procs: Sequence[subprocess.Popen[bytes]], tmp: Path, timeout: float = 600) -> list[dict[str, Any]]:
    reports = []
    for n, proc in enumerate(procs):
        code = proc.wait(timeout)
        if code != 0:
            raise RuntimeError(f"worker {n} exited {code}: {(tmp / f'worker-{n}.log').read_text()}")
        reports.append(json.loads((tmp / f"report-{n}.json").read_text()))
    return reports


# ------------------------------------------------------------------------------------------------ main


async def _prepare(url: str, count: int) -> None:
    await upgrade(url)
    engine = create_engine(url)
    try:
        await seed(engine, count, now=datetime.now(UTC))
    finally:
        await engine.dispose()


async def _audit(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        return await audit(engine)
    finally:
        await engine.dispose()


def measure(admin_url: str | None, sessions_count: int, replicas: int, chunk: int) -> dict[str, Any]:
    from tests.db import create_database, drop_database

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url = create_database(admin_url) if admin_url else f"sqlite:///{tmp / 'bench.db'}"
        try:
            anyio.run(_prepare, url, sessions_count)
            procs, go = start_workers(url, replicas, chunk, tmp)
            try:
                wait_ready(procs, tmp)
                released = time.time()
                go.write_text("go")
                reports = collect(procs, tmp)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
            elapsed = max(r["finished"] for r in reports) - released
            checked = anyio.run(_audit, url)
        finally:
            if admin_url:
                drop_database(admin_url, url)
    return {
        "replicas": replicas,
        "sessions": sessions_count,
        "seconds": round(elapsed, 3),
        "sessions_per_second": round(sessions_count / elapsed, 1),
        "per_replica": [{k: r[k] for k in ("owner", "analysed", "lost", "batches")} for r in reports],
        "audit": checked,
        "exactly_once": checked["completed"] == sessions_count == checked["requests"] and checked["not_once"] == 0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analysis", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--chunk", type=int, default=500, help="sessions per claim and write transaction")
    parser.add_argument("--engine", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--url", "--owner", "--ready", "--go", "--report", "--port"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        anyio.run(worker, args.url, args.owner, args.chunk, Path(args.ready), Path(args.go), Path(args.report))
        return 0
    from tests.db import POSTGRES_ADMIN_URL

    admin = POSTGRES_ADMIN_URL if args.engine == "postgresql" else None
    results = []
    for replicas in (int(r) for r in args.replicas.split(",")):
        figure = measure(admin, args.sessions, replicas, args.chunk)
        print(
            f"{args.engine}: {replicas} replica(s), {figure['sessions']} sessions in {figure['seconds']} s = "
            f"{figure['sessions_per_second']} sessions/s, exactly once: {figure['exactly_once']}",
            flush=True,
        )
        results.append(figure)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "local analysis throughput (session-processing, provider local)",
        "engine": args.engine,
        "chunk": args.chunk,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "target_sessions_per_second": 1000,
        "results": results,
    }
    (args.out / "analysis.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out / 'analysis.json'}")
    return 0 if all(r["exactly_once"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
