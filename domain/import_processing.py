"""Import processing: raw CSV rows (``session_imports``) become sessions, messages and stage statuses.

Work is claimed through :mod:`storage.claims` (SKIP LOCKED, SQLite fallback), so any number of replicas share
the backlog and no import is processed twice. Per import:

1. the start/end times are read in the *company's* time zone (the original used the server's local time) and
   the IP address is validated; an import that cannot become a session (bad date, end before start, bad IP)
   is settled at once: ``processed_at`` + ``error`` = the reason, never selected again (the original left such
   imports unprocessed and re-selected them forever);
2. the transcript is fetched (relative URLs against the company's feed URL, Basic auth from the company's
   credentials, time limit, size cap), transient errors retried with backoff inside the run;
3. one transaction writes the session, its five stage rows, its messages and marks the import processed,
   fenced by the claim: it commits only while this owner still holds the import. A run cut off anywhere
   loses nothing (uncommitted work is redone by the next claimer) and repeats nothing that committed.

Problems that may go away (a transcript server still failing after the in-run retries, a missing secret, a
database error) *defer* the import: its claim is kept for ``defer_seconds`` so no run spins on it, its
``attempts`` grows, and after ``max_attempts`` runs it is settled anyway (the session with a FAILED
transcript stage, or the import marked failed), so nothing is retried forever.

Stage failures are chosen by exception type (:data:`STAGE_OF_ERROR`), never by matching message text.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import httpx
from sqlalchemy import Row, and_, delete, insert, select, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain import stages
from domain.fetch import BasicAuth, FetchError, display_url, fetch_text, resolve
from domain.model import CompanyStatus, Stage, StageStatus
from domain.secrets import SecretError, resolve_secret
from domain.tables import companies, messages, processing_status, session_imports, sessions
from domain.transcripts import ParsedMessage, parse_local_time, parse_transcript, to_utc
from storage.claims import ClaimSpec, claim_batch, db_utc_now_plus, release, renew
from storage.engine import writer

logger = logging.getLogger(__name__)

CLAIM = ClaimSpec(
    session_imports,
    session_imports.c.id,
    session_imports.c.claimed_by,
    session_imports.c.claimed_until,
    order_by=(session_imports.c.created_at, session_imports.c.id),
)
MAX_ERROR_CHARS = 2000
IP_COLUMN_CHARS = 45  # sessions.ip_address
_STORE_TRIES = 3  # a deadlock or "database is locked" is retried in place this many times
_CLEANUP_SECONDS = 10.0
_DESCRIBE_CHARS = 500


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    """How a run processes imports; the service fills it from its configuration."""

    batch_size: int = 50
    concurrency: int = 5  # imports in flight at once (a real bound)
    lease_seconds: float = 300.0  # claim lease; renewed every third of it while the batch is in flight
    fetch_time_limit: float = 30.0  # seconds per transcript request
    fetch_max_bytes: int = 10 * 1024 * 1024
    fetch_attempts: int = 3  # tries per run for transient fetch errors (5xx, 429, timeouts, refused)
    fetch_backoff: float = 1.0  # seconds before the second try; doubles each time
    max_attempts: int = 3  # runs an import may be deferred before it is settled anyway
    defer_seconds: float = 300.0  # a deferred import is claimable again after this

    def __post_init__(self) -> None:
        for name in ("batch_size", "concurrency", "fetch_attempts", "max_attempts", "fetch_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, got {getattr(self, name)!r}")
        for name in ("lease_seconds", "fetch_time_limit", "defer_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.fetch_backoff < 0:
            raise ValueError(f"fetch_backoff must be 0 or more, got {self.fetch_backoff!r}")


# ------------------------------------------------------------------------------------------------ errors


class ImportRejected(ValueError):
    """The import cannot become a session; it is settled as failed with this reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


class Deferred(Exception):
    """Something that may go away (configuration, a database hiccup): try the import again in a later run."""


class TranscriptUnavailable(Exception):
    """The transcript could not be fetched; ``transient`` failures are deferred while attempts remain."""

    def __init__(self, reason: str, *, transient: bool, tries: int, url: str) -> None:
        super().__init__(reason)
        self.transient = transient
        self.tries = tries
        self.url = url


class ClaimLost(Exception):
    """Another owner holds the import now (this run's lease ran out); its work is dropped, not written."""


# The stage a failure is recorded on, by exception type. Failures not listed here happen before a session
# exists (ImportRejected, Deferred) and are recorded on the import itself.
STAGE_OF_ERROR: Mapping[type[Exception], Stage] = {TranscriptUnavailable: Stage.TRANSCRIPT_FETCH}


# ------------------------------------------------------------------------------------------------ pure parts


@dataclass(frozen=True)
class SessionFields:
    """What the raw row says about the session, validated."""

    start_time: datetime
    end_time: datetime
    ip_address: str | None


def company_zone(name: str) -> tzinfo:
    """The company's time zone; Deferred when it is not a known IANA name (a fixable configuration error)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Deferred(f"company time zone {name!r} is not a known IANA time zone") from None


def validate_import(start_raw: str, end_raw: str, ip_raw: str | None, zone: tzinfo) -> SessionFields:
    """The session's times (aware UTC, read in ``zone``) and normalised IP; ImportRejected naming the field."""
    start = parse_local_time(start_raw or "", zone)
    if start is None:
        raise ImportRejected("start_time", f"{start_raw!r} is not a DD.MM.YYYY HH:mm:ss time")
    end = parse_local_time(end_raw or "", zone)
    if end is None:
        raise ImportRejected("end_time", f"{end_raw!r} is not a DD.MM.YYYY HH:mm:ss time")
    if end < start:
        # In the autumn DST hour the same wall-clock time occurs twice: read the end as the second one.
        later = to_utc(end.astimezone(zone).replace(tzinfo=None), zone, fold=1)
        if later is None or later < start:
            raise ImportRejected("end_time", f"{end_raw!r} is before the start time {start_raw!r}")
        end = later
    return SessionFields(start, end, normalize_ip(ip_raw))


def normalize_ip(raw: str | None) -> str | None:
    """An IPv4/IPv6 address in its canonical text form; None for empty; ImportRejected otherwise."""
    text = (raw or "").strip()
    if not text:
        return None
    try:
        address = str(ipaddress.ip_address(text))
    except ValueError:
        raise ImportRejected("ip_address", f"{text[:60]!r} is not an IP address") from None
    if len(address) > IP_COLUMN_CHARS:
        raise ImportRejected("ip_address", f"{text[:60]!r} is longer than {IP_COLUMN_CHARS} characters")
    return address


def _blank_to_none(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


# ------------------------------------------------------------------------------------------------ outcomes


class Outcome(StrEnum):
    CREATED = "created"  # session written, import processed
    REJECTED = "rejected"  # import settled as failed, no session
    DEFERRED = "deferred"  # left for a later run
    LOST = "lost"  # the claim passed to another owner before the write
    LEFT = "left"  # not started: the run was asked to stop


@dataclass
class Report:
    """What one ``process_imports`` call did."""

    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    messages: int = 0
    transcripts_fetched: int = 0
    transcript_failures: int = 0
    batches: int = 0

    @property
    def settled(self) -> int:
        return self.outcomes[Outcome.CREATED] + self.outcomes[Outcome.REJECTED]


@dataclass
class _Transcript:
    text: str | None = None
    fetched: bool = False  # True: new content to store on the import
    stage: str = "completed"  # completed | skipped | failed
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ the run


async def process_imports(
    engine: AsyncEngine,
    *,
    owner: str,
    settings: Settings,
    now: Callable[[], datetime],
    should_continue: Callable[[], bool] = lambda: True,
    on_settled: Callable[[Outcome], None] | None = None,
    client: httpx.AsyncClient | None = None,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger,
) -> Report:
    """Claim and process imports batch after batch until none is claimable or ``should_continue()`` is False.

    ``owner`` must be unique to the run (``node:run_id``): the claim fences every write with it. ``now``
    gives the timestamps written to rows; leases use the database clock. ``on_settled`` is called once per
    import whose outcome is final for this run (created, rejected, deferred).
    """
    processor = _Processor(engine, owner, settings, now, should_continue, on_settled, log)
    if client is not None:
        processor.client = client
        return await processor.run()
    async with httpx.AsyncClient() as own:
        processor.client = own
        return await processor.run()


class _Processor:
    def __init__(
        self,
        engine: AsyncEngine,
        owner: str,
        settings: Settings,
        now: Callable[[], datetime],
        should_continue: Callable[[], bool],
        on_settled: Callable[[Outcome], None] | None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.engine = engine
        self.writes = writer(engine)
        self.owner = owner
        self.settings = settings
        self.now = now
        self.should_continue = should_continue
        self.on_settled = on_settled
        self.log = log
        self.report = Report()
        self.client: httpx.AsyncClient
        self.limiter = anyio.CapacityLimiter(settings.concurrency)

    async def run(self) -> Report:
        eligible = and_(
            session_imports.c.processed_at.is_(None),
            session_imports.c.company_id.in_(
                select(companies.c.id).where(companies.c.status == CompanyStatus.ACTIVE.value)
            ),
        )
        while self.should_continue():
            ids = await claim_batch(
                self.engine,
                CLAIM,
                owner=self.owner,
                limit=self.settings.batch_size,
                lease_seconds=self.settings.lease_seconds,
                where=eligible,
            )
            if not ids:
                break
            self.report.batches += 1
            await self._batch([str(i) for i in ids])
        return self.report

    async def _batch(self, ids: list[str]) -> None:
        """Process one claimed batch; whatever is unfinished when it ends (stop, cancel) is released."""
        open_ids = set(ids)  # still held by this run and not settled
        try:
            rows = await self._load(ids)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_leases, open_ids)
                async with anyio.create_task_group() as work:
                    for import_id in ids:
                        work.start_soon(self._guarded, import_id, rows.get(import_id), open_ids)
                tg.cancel_scope.cancel()
        finally:
            if open_ids:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + _CLEANUP_SECONDS
                    try:
                        await release(self.engine, CLAIM, sorted(open_ids), owner=self.owner)
                    except Exception as exc:  # the leases then run out on their own
                        self.log.warning("could not release %d import claim(s): %s", len(open_ids), _describe(exc))

    async def _keep_leases(self, open_ids: set[str]) -> None:
        while True:
            await anyio.sleep(self.settings.lease_seconds / 3)
            if not open_ids:
                continue
            try:
                await renew(
                    self.engine, CLAIM, sorted(open_ids), owner=self.owner, lease_seconds=self.settings.lease_seconds
                )
            except Exception as exc:  # the writes are fenced: a lapsed lease costs redone work, never a duplicate
                self.log.warning("could not renew %d import claim(s): %s", len(open_ids), _describe(exc))

    async def _guarded(self, import_id: str, row: Row[Any] | None, open_ids: set[str]) -> None:
        async with self.limiter:
            if not self.should_continue():
                self.report.outcomes[Outcome.LEFT] += 1
                return
            try:
                outcome = await self._one(row) if row is not None else Outcome.LOST  # None: deleted meanwhile
            except ClaimLost:
                outcome = Outcome.LOST
                self.log.warning(
                    "import %s: claim lost before its write (lease expired); left to its new owner", import_id
                )
            except Exception as exc:  # even recording the failure failed (database down): the lease runs out
                open_ids.discard(import_id)  # not released, so this run does not claim it straight back
                self.report.outcomes[Outcome.LEFT] += 1
                self.log.error("import %s: %s; retried once its claim expires", import_id, _describe(exc))
                return
            open_ids.discard(import_id)
            self.report.outcomes[outcome] += 1
            if outcome is not Outcome.LOST and self.on_settled is not None:
                self.on_settled(outcome)

    async def _one(self, row: Row[Any]) -> Outcome:
        import_id: str = row.id
        where = f"company {row.company_name!r}, session {row.external_session_id!r}" + (
            f" (feed line {row.line_number})" if row.line_number is not None else ""
        )
        try:
            zone = company_zone(row.timezone)
            fields = validate_import(row.start_time_raw, row.end_time_raw, row.ip_address, zone)
            transcript = await self._transcript(row)
            parsed = parse_transcript(transcript.text, zone) if transcript.text else []
            await self._store(row, fields, transcript, parsed)
        except ImportRejected as exc:
            self.log.warning("import rejected, %s: %s", where, exc)
            await self._settle_failed(import_id, str(exc))
            return Outcome.REJECTED
        except (Deferred, TranscriptUnavailable) as exc:
            return await self._defer_or_settle(row, where, exc)
        except ClaimLost:
            raise
        except Exception as exc:
            reason = f"could not store: {_describe(exc)}"
            if _is_bad_data(exc):  # the same rows would fail the same way: no point retrying
                self.log.error("import failed, %s: %s", where, reason)
                await self._settle_failed(import_id, reason)
                return Outcome.REJECTED
            return await self._defer_or_settle(row, where, Deferred(reason))  # may cure itself: a later run
        return Outcome.CREATED

    async def _defer_or_settle(self, row: Row[Any], where: str, exc: Exception) -> Outcome:
        tried = int(row.attempts or 0) + 1
        if tried < self.settings.max_attempts:
            self.log.warning(
                "import deferred (attempt %d of %d), %s: %s", tried, self.settings.max_attempts, where, exc
            )
            await self._defer(row.id, f"attempt {tried}: {exc}")
            return Outcome.DEFERRED
        if isinstance(exc, TranscriptUnavailable):  # last attempt: the session goes ahead without transcript
            zone = company_zone(row.timezone)
            fields = validate_import(row.start_time_raw, row.end_time_raw, row.ip_address, zone)
            transcript = _failed_transcript(exc)
            self.report.transcript_failures += 1
            self.log.warning("transcript unavailable after %d attempts, %s: %s", tried, where, exc)
            await self._store(row, fields, transcript, [])
            return Outcome.CREATED
        self.log.error("import failed after %d attempts, %s: %s", tried, where, exc)
        await self._settle_failed(row.id, f"gave up after {tried} attempts: {exc}")
        return Outcome.REJECTED

    # -------------------------------------------------------------------------------------------- reads

    async def _load(self, ids: list[str]) -> dict[str, Row[Any]]:
        """The claimed imports with their companies' settings, in one query."""
        query = (
            select(
                session_imports,
                companies.c.name.label("company_name"),
                companies.c.timezone,
                companies.c.csv_url,
                companies.c.csv_username,
                companies.c.csv_password_ref,
            )
            .join(companies, companies.c.id == session_imports.c.company_id)
            .where(session_imports.c.id.in_(ids))
        )
        async with self.engine.connect() as conn:
            return {str(row.id): row for row in await conn.execute(query)}

    # -------------------------------------------------------------------------------------------- transcript

    async def _transcript(self, row: Row[Any]) -> _Transcript:
        stored: str | None = row.raw_transcript_content
        if stored:
            return _Transcript(stored, details={"contentLength": len(stored), "source": "already_fetched"})
        reference = _blank_to_none(row.full_transcript_url)
        if reference is None:
            return _Transcript(stage="skipped", reason="No transcript URL provided")
        url = resolve(row.csv_url, reference.strip())
        try:
            _check_scheme(row.csv_url, url)
            auth = self._auth(row) if _same_origin(row.csv_url, url) else None
            text, tries = await self._fetch(url, auth)
        except TranscriptUnavailable as exc:
            if exc.transient:
                raise  # deferred (or settled as FAILED on the last attempt) by the caller
            self.report.transcript_failures += 1
            return _failed_transcript(exc)
        self.report.transcripts_fetched += 1
        return _Transcript(
            text, fetched=True, details={"contentLength": len(text), "url": display_url(url), "fetchAttempts": tries}
        )

    def _auth(self, row: Row[Any]) -> BasicAuth | None:
        if not row.csv_username or not row.csv_password_ref:
            return None
        try:
            return BasicAuth(row.csv_username, resolve_secret(row.csv_password_ref))
        except SecretError as exc:  # names the reference, never a value; fixable, so transient
            raise TranscriptUnavailable(
                f"credentials of company {row.company_name!r}: {exc}", transient=True, tries=0, url=row.csv_url
            ) from None

    async def _fetch(self, url: str, auth: BasicAuth | None) -> tuple[str, int]:
        s = self.settings
        for attempt in range(1, s.fetch_attempts + 1):
            try:
                text = await fetch_text(
                    url, client=self.client, auth=auth, time_limit=s.fetch_time_limit, max_bytes=s.fetch_max_bytes
                )
            except FetchError as exc:
                if not exc.transient or attempt == s.fetch_attempts:
                    raise TranscriptUnavailable(
                        str(exc), transient=exc.transient, tries=attempt, url=display_url(url)
                    ) from None
                await anyio.sleep(s.fetch_backoff * 2 ** (attempt - 1))
                continue
            text = text.strip()
            if not text:
                raise TranscriptUnavailable(
                    f"{display_url(url)}: the transcript is empty", transient=False, tries=attempt, url=display_url(url)
                )
            return text, attempt
        raise AssertionError("unreachable: the last attempt returns or raises")

    # -------------------------------------------------------------------------------------------- writes

    async def _store(
        self, row: Row[Any], fields: SessionFields, transcript: _Transcript, parsed: list[ParsedMessage]
    ) -> None:
        """Everything about one import in one fenced transaction; retried in place on lock conflicts."""
        for attempt in range(1, _STORE_TRIES + 1):
            try:
                async with self.writes.begin() as conn:
                    await self._write(conn, row, fields, transcript, parsed)
                break
            except DBAPIError as exc:
                if not _is_lock_conflict(exc) or attempt == _STORE_TRIES:
                    raise
                await anyio.sleep(0.05 * attempt)
        self.report.messages += len(parsed)

    async def _write(
        self,
        conn: AsyncConnection,
        row: Row[Any],
        fields: SessionFields,
        transcript: _Transcript,
        parsed: list[ParsedMessage],
    ) -> None:
        now = self.now()
        done: dict[str, Any] = {
            "processed_at": now,
            "error": None,
            "updated_at": now,
            "attempts": session_imports.c.attempts + 1,
            "claimed_by": None,
            "claimed_until": None,
        }
        if transcript.fetched:
            done["raw_transcript_content"] = transcript.text
        # The fence comes first: it locks the import row until commit and proves the claim is still ours.
        fenced = await conn.execute(update(session_imports).where(CLAIM.owned(self.owner, [row.id])).values(done))
        if fenced.rowcount != 1:
            raise ClaimLost(row.id)

        values = {
            "company_id": row.company_id,
            "import_id": row.id,
            "external_session_id": row.external_session_id,
            "start_time": fields.start_time,
            "end_time": fields.end_time,
            "ip_address": fields.ip_address,
            "country": _blank_to_none(row.country_code),
            "full_transcript_url": _blank_to_none(row.full_transcript_url),
            "avg_response_time": row.avg_response_time_seconds,
            "initial_msg": row.initial_message,
            "updated_at": now,
        }
        # A session can already exist when an import is processed again (processed_at reset by an operator,
        # or the import re-created after its session lost it): update it rather than fail on uniqueness.
        existing = (
            await conn.execute(
                select(sessions.c.id).where(
                    sessions.c.company_id == row.company_id,
                    sessions.c.external_session_id == row.external_session_id,
                )
            )
        ).scalar_one_or_none()
        created = {"hasTranscript": transcript.text is not None, "messageCount": len(parsed)}
        if existing is None:
            session_id = str(uuid.uuid4())
            await conn.execute(insert(sessions).values(id=session_id, created_at=now, **values))
            # A new session: its five stage rows are written in their final state in one statement.
            await conn.execute(insert(processing_status), _new_stage_rows(session_id, now, transcript, created))
        else:
            session_id = str(existing)
            await conn.execute(update(sessions).where(sessions.c.id == session_id).values(values))
            # Only for an existing session: on a new one this DELETE would take InnoDB gap locks that
            # deadlock concurrent inserts for nothing.
            await conn.execute(delete(messages).where(messages.c.session_id == session_id))
            await self._restage(conn, session_id, now, transcript, created)
        if parsed:
            await conn.execute(
                insert(messages),
                [
                    {
                        "session_id": session_id,
                        "position": m.position,
                        "timestamp": m.timestamp,
                        "role": m.role,
                        "content": m.content,
                        "created_at": now,
                    }
                    for m in parsed
                ],
            )

    @staticmethod
    async def _restage(
        conn: AsyncConnection, session_id: str, now: datetime, transcript: _Transcript, created: dict[str, Any]
    ) -> None:
        """An existing session processed again: its import stages are redone, the AI stages left as they are."""
        await stages.initialize(conn, [session_id], now=now)
        await stages.complete(conn, session_id, Stage.CSV_IMPORT, now=now)
        if transcript.stage == "skipped":
            await stages.skip(conn, session_id, Stage.TRANSCRIPT_FETCH, transcript.reason or "", now=now)
        elif transcript.stage == "failed":
            stage = STAGE_OF_ERROR[TranscriptUnavailable]
            await stages.fail(conn, session_id, stage, transcript.reason or "", now=now, details=transcript.details)
        else:
            await stages.complete(conn, session_id, Stage.TRANSCRIPT_FETCH, now=now, details=transcript.details)
        await stages.complete(conn, session_id, Stage.SESSION_CREATION, now=now, details=created)

    async def _settle_failed(self, import_id: str, reason: str) -> None:
        """The import is done for good, without a session: never selected again."""
        now = self.now()
        async with self.writes.begin() as conn:
            fenced = await conn.execute(
                update(session_imports)
                .where(CLAIM.owned(self.owner, [import_id]))
                .values(
                    processed_at=now,
                    error=reason[:MAX_ERROR_CHARS],
                    updated_at=now,
                    attempts=session_imports.c.attempts + 1,
                    claimed_by=None,
                    claimed_until=None,
                )
            )
            if fenced.rowcount != 1:
                raise ClaimLost(import_id)

    async def _defer(self, import_id: str, reason: str) -> None:
        """Keep the claim for ``defer_seconds`` (no run spins on the import meanwhile) and count the attempt."""
        async with self.writes.begin() as conn:
            fenced = await conn.execute(
                update(session_imports)
                .where(CLAIM.owned(self.owner, [import_id]))
                .values(
                    error=reason[:MAX_ERROR_CHARS],
                    updated_at=self.now(),
                    attempts=session_imports.c.attempts + 1,
                    claimed_until=db_utc_now_plus(self.settings.defer_seconds),
                )
            )
            if fenced.rowcount != 1:
                raise ClaimLost(import_id)


def _check_scheme(feed_url: str, url: str) -> None:
    """A feed fetched over the network may not make us read local files (``file:///etc/...``)."""
    if urlsplit(url).scheme.lower() == "file" and urlsplit(feed_url).scheme.lower() != "file":
        raise TranscriptUnavailable(
            f"{display_url(url)}: file:// transcript URLs are only followed for file:// feeds",
            transient=False,
            tries=0,
            url=display_url(url),
        )


def _same_origin(feed_url: str, url: str) -> bool:
    """Credentials go only where the feed lives (same scheme, host and port), never to a third-party host
    a feed line happens to name; a local (file://) feed is the operator's own, so it is trusted."""
    feed, target = urlsplit(feed_url), urlsplit(url)
    if feed.scheme.lower() == "file":
        return True
    try:
        return (feed.scheme.lower(), feed.hostname, feed.port) == (target.scheme.lower(), target.hostname, target.port)
    except ValueError:  # a malformed port
        return False


def _new_stage_rows(
    session_id: str, now: datetime, transcript: _Transcript, created: dict[str, Any]
) -> list[dict[str, Any]]:
    """The five stage rows of a new session: the import stages done (or the transcript's skip/failure), AI
    stages PENDING. The same states the :mod:`domain.stages` operations would leave, in one INSERT."""
    fetch_status = {
        "completed": StageStatus.COMPLETED,
        "skipped": StageStatus.SKIPPED,
        "failed": StageStatus.FAILED,
    }[transcript.stage]
    done: dict[Stage, tuple[StageStatus, str | None, dict[str, Any] | None]] = {
        Stage.CSV_IMPORT: (StageStatus.COMPLETED, None, None),
        STAGE_OF_ERROR[TranscriptUnavailable]: (
            fetch_status,
            transcript.reason[: stages.MAX_ERROR_CHARS] if transcript.reason else None,
            transcript.details or None,
        ),
        Stage.SESSION_CREATION: (StageStatus.COMPLETED, None, created),
    }
    rows = []
    for stage in Stage:
        status, error, details = done.get(stage, (StageStatus.PENDING, None, None))
        finished = status is not StageStatus.PENDING
        rows.append(
            {
                "id": str(uuid.uuid4()),
                "session_id": session_id,
                "stage": stage.value,
                "status": status.value,
                "started_at": now if status in (StageStatus.COMPLETED, StageStatus.FAILED) else None,
                "completed_at": now if finished else None,
                "error_message": error,
                "retry_count": 1 if status is StageStatus.FAILED else 0,
                "details": details,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


def _failed_transcript(exc: TranscriptUnavailable) -> _Transcript:
    return _Transcript(
        stage="failed",
        reason=str(exc),
        details={"url": exc.url, "transient": exc.transient, "fetchAttempts": exc.tries},
    )


# SQLSTATEs (PostgreSQL; asyncpg errors arrive as plain DBAPIError) and MariaDB/MySQL error numbers.
_LOCK_CONFLICT_STATES = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available
_LOCK_CONFLICT_ERRNOS = {1205, 1213}  # lock wait timeout, deadlock


def _is_lock_conflict(exc: DBAPIError) -> bool:
    """Worth retrying at once: a deadlock or lock timeout (by error code), or SQLite's "database is locked"."""
    state = getattr(exc.orig, "sqlstate", None)
    if state in _LOCK_CONFLICT_STATES:
        return True
    args = getattr(exc.orig, "args", ())
    if args and args[0] in _LOCK_CONFLICT_ERRNOS:
        return True
    code = getattr(exc.orig, "sqlite_errorcode", None)  # sqlite3 (3.11+): SQLITE_BUSY 5, SQLITE_LOCKED 6
    return isinstance(code, int) and code & 0xFF in (5, 6)


def _is_bad_data(exc: Exception) -> bool:
    """The rows themselves cannot be stored (too long, out of range, constraint): retrying cannot help."""
    if isinstance(exc, DataError | IntegrityError):
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return isinstance(state, str) and state[:2] in ("22", "23")  # data exception, integrity violation


def _describe(exc: Exception) -> str:
    """A short error text: the driver's message without the SQL statement and its parameters (transcripts)."""
    detail = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(exc).__name__}: {str(detail)[:_DESCRIBE_CHARS]}"
