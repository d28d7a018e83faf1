"""Command lines of `python -m manager` and `python -m runner` (the runner is the manager with one service).

Exit codes: 0 clean shutdown or success, 1 a run failed / the service ended in ERROR / the database is
unusable, 2 bad configuration or an unknown scheduler name.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from manager import app, companies, logs
from manager.config import Config, ConfigError, load_config, redacted
from manager.migrations import schema_problem
from services.registry import UnknownService, service_types
from services.runs import RunStatus
from storage.errors import StorageConfigError, explain

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config file (default: $SCHEDULER_CONFIG_FILE)")
    parser.add_argument("--host", help="admin HTTP host (default: $SCHEDULER_HTTP_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="admin HTTP port (default: $SCHEDULER_HTTP_PORT or 8080)")


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    logs.configure(config.platform.log_format, config.platform.log_level)
    return config


async def _import_legacy(config: Config) -> str | None:
    """Import the seed's legacy JSON state file on first start (before any service writes its state)."""
    if config.legacy_state_path is None:
        return None
    from storage.transfer import TransferError, import_legacy_state

    storage = config.storage
    try:
        result = await import_legacy_state(storage.url(), config.legacy_state_path,
                                           connect_args=storage.engine_options().get("connect_args"))
    except TransferError as exc:
        return str(exc)
    except Exception as exc:
        return storage.explain(exc)
    if result is not None:
        logging.getLogger("manager").info("legacy state %s: %s", config.legacy_state_path, result.message)
    return None


def run_platform(args: argparse.Namespace, only: str | None = None) -> int:
    try:
        config = _load(args)
        if only is not None:
            config.service(only)  # unknown names exit 2 with the valid list
        platform = app.build(config, only=only)
    except (ConfigError, StorageConfigError, UnknownService) as exc:
        return _fail(str(exc), EXIT_CONFIG)
    settings = config.platform
    host = args.host or settings.scheduler_http_host
    port = settings.scheduler_http_port if args.port is None else args.port

    async def main() -> int:
        problem = await schema_problem(platform.engine, config.storage) or await _import_legacy(config)
        if problem:
            await platform.engine.dispose()
            return _fail(problem, EXIT_FAILED)
        return await app.serve(platform, host=host, port=port)

    try:
        return anyio.run(main)
    except OSError as exc:
        return _fail(str(exc), EXIT_FAILED)


def run_migrate(args: argparse.Namespace) -> int:
    from storage import migrate  # Alembic is only needed here

    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    storage = config.storage
    try:
        connect_args = storage.engine_options().get("connect_args")
        anyio.run(lambda: migrate.upgrade(storage.url(), connect_args=connect_args))
    except StorageConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except Exception as exc:
        return _fail(storage.explain(exc), EXIT_FAILED)
    print(f"database at migration {migrate.head()}")
    return EXIT_OK


def manager_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manager", description="Run every enabled scheduler service.")
    sub = parser.add_subparsers(dest="command")
    _common(parser)
    _common(sub.add_parser("run", help="run all enabled services (the default)"))
    _common(sub.add_parser("migrate", help="apply database migrations and exit"))
    copy = sub.add_parser("migrate-storage", help="copy every scheduler table from one database to another")
    copy.add_argument("--from", dest="source", required=True, metavar="URL", help="database to copy from")
    copy.add_argument("--to", dest="target", required=True, metavar="URL", help="database to copy into (empty)")
    copy.add_argument("--overwrite", action="store_true", help="delete the target's scheduler rows first")
    copy.add_argument("--batch-size", type=int, default=1000)
    export = sub.add_parser("export-state", help="write every service's state and run history to a JSON file")
    export.add_argument("--to", dest="target", required=True, type=Path, metavar="FILE")
    _common(export)
    companies.add_parser(sub, _common)
    _status_options(sub.add_parser("status", help="every service, its state and next runs, from the database"))
    restore = sub.add_parser("restore", help="replace the SQLite database with a database-backup file")
    restore.add_argument("file", type=Path, metavar="FILE", help="a backup written by database-backup (.sqlite3)")
    restore.add_argument("--force", action="store_true", help="restore even while nodes are heartbeating")
    restore.add_argument("--no-safety-copy", action="store_true",
                         help="do not keep the current database as <db>.before-restore-<time>")
    _common(restore)
    args = parser.parse_args(argv)
    if args.command == "status":
        return run_status(args)
    if args.command == "restore":
        return run_restore(args)
    if args.command == "migrate":
        return run_migrate(args)
    if args.command == "migrate-storage":
        return run_migrate_storage(args)
    if args.command == "export-state":
        return run_export_state(args)
    if args.command == "companies":
        try:
            config = _load(args)
        except ConfigError as exc:
            return _fail(str(exc), EXIT_CONFIG)
        return companies.run(args, config)
    return run_platform(args)


def run_migrate_storage(args: argparse.Namespace) -> int:
    from storage.transfer import TransferError, copy_storage

    logs.configure()
    try:
        counts = anyio.run(lambda: copy_storage(
            args.source, args.target, overwrite=args.overwrite, batch_size=args.batch_size,
            progress=lambda table, rows: print(f"  {table}: {rows} rows", file=sys.stderr),
        ))
    except StorageConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except TransferError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except Exception as exc:
        return _fail(explain(exc, args.target), EXIT_FAILED)
    for table, rows in counts.items():
        print(f"{table}: {rows} rows copied")
    return EXIT_OK


def run_export_state(args: argparse.Namespace) -> int:
    from storage.transfer import TransferError, export_state

    try:
        config = _load(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    storage = config.storage
    try:
        counts = anyio.run(lambda: export_state(storage.url(), args.target,
                                                connect_args=storage.engine_options().get("connect_args")))
    except TransferError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except Exception as exc:
        return _fail(storage.explain(exc), EXIT_FAILED)
    print(f"wrote {counts['services']} services and {counts['runs']} runs to {args.target}")
    return EXIT_OK


def runner_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner", description="Run one scheduler service.")
    parser.add_argument("-s", "--scheduler", default=os.environ.get("SCHEDULER_NAME") or None,
                        help="the service instance to run, e.g. csv-import (default: $SCHEDULER_NAME)")
    parser.add_argument("-l", "--list", action="store_true", help="list the registered services and exit")
    parser.add_argument("--once", action="store_true", help="run once now; exit 0 on success, 1 on failure")
    parser.add_argument("--check-config", action="store_true",
                        help="validate and print the effective config (secrets redacted)")
    parser.add_argument("--status", action="store_true", help="print the fleet's status (as `manager status`)")
    _status_options(parser, flags_only=True)
    _common(parser)
    args = parser.parse_args(argv)
    if args.status:
        return run_status(args)
    if args.list:
        try:
            config = load_config(args.config)
        except ConfigError:
            config = None
        for name, cls in service_types().items():
            print(f"{name:28} {cls.display_name}: {cls.description}")
        if config:
            for spec in config.services:
                if spec.name != spec.type_name:
                    print(f"{spec.name:28} instance of {spec.type_name}")
        return EXIT_OK
    if not args.scheduler:
        return _fail(f"--scheduler (or SCHEDULER_NAME) is required; valid names: {', '.join(service_types())}",
                     EXIT_CONFIG)
    if args.check_config:
        try:
            config = load_config(args.config)
            spec = config.service(args.scheduler)
        except (ConfigError, UnknownService) as exc:
            return _fail(str(exc), EXIT_CONFIG)
        effective = redacted(config)
        effective["services"] = {spec.name: effective["services"][spec.name]}
        print(json.dumps(effective, indent=2))
        return EXIT_OK
    if args.once:
        return run_once(args)
    return run_platform(args, only=args.scheduler)


def run_once(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
        config.service(args.scheduler)
        platform = app.build(config, only=args.scheduler)
    except (ConfigError, StorageConfigError, UnknownService) as exc:
        return _fail(str(exc), EXIT_CONFIG)
    async def once() -> int:
        problem = await schema_problem(platform.engine, config.storage)
        if problem:
            await platform.engine.dispose()
            return _fail(problem, EXIT_FAILED)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(platform.coordinator.run)  # renews the run's lease while it works
                outcome = await platform.manager.services[0].run_now()
                tg.cancel_scope.cancel()
        finally:
            await platform.engine.dispose()
        print(f"{args.scheduler}: {outcome.value}")
        return EXIT_OK if outcome is RunStatus.SUCCEEDED else EXIT_FAILED

    return anyio.run(once)


# ---------------------------------------------------------------------------------------- operator tools


def _status_options(parser: argparse.ArgumentParser, *, flags_only: bool = False) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--detailed", action="store_true", help="add nodes, heartbeats and the last failed runs")
    if not flags_only:
        _common(parser)


def run_status(args: argparse.Namespace) -> int:
    """Exit 0 when every service is healthy, 1 when one is not (or the database is unusable), 2 on bad config."""
    from manager import status

    try:
        config = load_config(args.config)
        engine = config.storage.create_engine()
    except (ConfigError, StorageConfigError) as exc:
        return _fail(str(exc), EXIT_CONFIG)

    async def read() -> status.FleetStatus | str:
        try:
            problem = await schema_problem(engine, config.storage)
            if problem:
                return problem
            snapshot = await status.read_snapshot(engine, services=[spec.name for spec in config.services])
        except Exception as exc:
            return config.storage.explain(exc)
        finally:
            await engine.dispose()
        ttl = config.platform.scheduler_lock_ttl.total_seconds()
        return status.build_status(config.services, snapshot, node_ttl=ttl)

    fleet = anyio.run(read)
    if isinstance(fleet, str):
        return _fail(fleet, EXIT_FAILED)
    if args.json:
        print(json.dumps(fleet.to_json(), indent=2))
    else:
        sys.stdout.write(status.render_text(fleet, detailed=args.detailed, colour=status.use_colour(sys.stdout)))
    return EXIT_OK if fleet.healthy else EXIT_FAILED


def run_restore(args: argparse.Namespace) -> int:
    """Restore a SQLite backup over the configured database (see storage.backup.restore_sqlite)."""
    from manager import status
    from storage.backup import BackupError, restore_sqlite

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    from sqlalchemy.engine import make_url

    url = make_url(config.storage.url())
    if url.get_backend_name() != "sqlite" or not url.database:
        return _fail("restore handles SQLite databases; restore PostgreSQL with pg_restore and MariaDB with the "
                     "mariadb client (see the README)", EXIT_CONFIG)
    target = Path(url.database)
    if target.exists() and not args.force:
        engine = config.storage.create_engine()

        async def live_nodes() -> list[str]:
            try:
                snapshot = await status.read_snapshot(engine, failed_runs=0)
            except Exception:
                return []  # not a scheduler database (yet): nothing can be running against it
            finally:
                await engine.dispose()
            ttl = config.platform.scheduler_lock_ttl.total_seconds()
            return [n.node_id for n in status.build_status([], snapshot, node_ttl=ttl).nodes if n.state == "alive"]

        alive = anyio.run(live_nodes)
        if alive:
            return _fail(f"nodes {', '.join(alive)} are running against {target}: stop them first "
                         "(or pass --force)", EXIT_FAILED)
    try:
        previous = restore_sqlite(args.file, target, keep_previous=not args.no_safety_copy)
    except BackupError as exc:
        return _fail(str(exc), EXIT_FAILED)
    kept = f"; the previous database was saved as {previous}" if previous else ""
    print(f"restored {args.file} into {target}{kept}")
    return EXIT_OK
